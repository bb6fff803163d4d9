//! The lean reader of the event Lambda delivers from the Events table's DynamoDB stream
//! (the backstop's input): only what a [`PageNotice`] needs — account, page's last version,
//! approximate append time — and the sequence number to report a failure at. The page
//! bytes in `NewImage` are skipped, never decoded. Records that are not page inserts (the
//! mapping's filter should already have dropped them) are left out, never an error.

use serde::Deserialize;

use crate::service::backstop::PageNotice;

/// The Lambda event: `{"Records": [...]}`.
#[derive(Debug, Deserialize)]
pub struct StreamBatch {
    #[serde(rename = "Records", default)]
    pub records: Vec<StreamRecord>,
}

#[derive(Debug, Deserialize)]
pub struct StreamRecord {
    #[serde(rename = "eventName", default)]
    pub event_name: String,
    pub dynamodb: Change,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(rename = "ApproximateCreationDateTime")]
    pub approximate_creation_secs: Option<f64>,
    #[serde(rename = "Keys", default)]
    pub keys: Keys,
    #[serde(rename = "NewImage", default)]
    pub new_image: Image,
    #[serde(rename = "SequenceNumber", default)]
    pub sequence_number: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Keys {
    pub pk: Option<S>,
    pub sk: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Image {
    pub last: Option<N>,
}

#[derive(Debug, Deserialize)]
pub struct S {
    #[serde(rename = "S")]
    pub s: String,
}

#[derive(Debug, Deserialize)]
pub struct N {
    #[serde(rename = "N")]
    pub n: String,
}

/// The page notice of a page item's INSERT (`sk` begins `v#`), else `None`. Without an
/// approximate creation time the notice counts as appended at `now_ms`.
pub fn page_notice(
    account: Option<&str>,
    sk: Option<&str>,
    last: Option<&str>,
    event_name: &str,
    appended_at_ms: i64,
) -> Option<PageNotice> {
    if event_name != "INSERT" || !sk?.starts_with("v#") {
        return None;
    }
    Some(PageNotice {
        account: account?.to_owned(),
        last_version: last?.parse().ok()?,
        appended_at_ms,
    })
}

impl StreamBatch {
    /// The page notices, each with the index of its record (for failure reports).
    pub fn notices(&self, now_ms: i64) -> Vec<(usize, PageNotice)> {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let at = r
                    .dynamodb
                    .approximate_creation_secs
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map_or(now_ms, |s| (s * 1000.0) as i64);
                let c = &r.dynamodb;
                page_notice(
                    c.keys.pk.as_ref().map(|s| s.s.as_str()),
                    c.keys.sk.as_ref().map(|s| s.s.as_str()),
                    c.new_image.last.as_ref().map(|n| n.n.as_str()),
                    &r.event_name,
                    at,
                )
                .map(|n| (i, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lambda_stream_event_yields_one_notice_per_page_insert_and_skips_the_rest() {
        let json = r#"{"Records":[
          {"eventID":"1","eventName":"INSERT","eventSource":"aws:dynamodb","dynamodb":{
            "ApproximateCreationDateTime":1700000000.5,
            "Keys":{"pk":{"S":"acct-1"},"sk":{"S":"v#00000000000000000004"}},
            "NewImage":{"pk":{"S":"acct-1"},"sk":{"S":"v#00000000000000000004"},
                        "last":{"N":"6"},"page":{"B":"AAEC"},"balance":{"N":"-5"}},
            "SequenceNumber":"100","SizeBytes":90,"StreamViewType":"NEW_IMAGE"}},
          {"eventID":"2","eventName":"INSERT","dynamodb":{
            "Keys":{"pk":{"S":"acct-1"},"sk":{"S":"t#x"}},"SequenceNumber":"101"}},
          {"eventID":"3","eventName":"REMOVE","dynamodb":{
            "Keys":{"pk":{"S":"acct-1"},"sk":{"S":"v#00000000000000000001"}},"SequenceNumber":"102"}},
          {"eventID":"4","eventName":"INSERT","dynamodb":{
            "Keys":{"pk":{"S":"acct-2"},"sk":{"S":"v#00000000000000000001"}},
            "NewImage":{"last":{"N":"1"}},"SequenceNumber":"103"}}
        ]}"#;
        let batch: StreamBatch = serde_json::from_str(json).unwrap();
        let notices = batch.notices(42);
        assert_eq!(
            notices,
            vec![
                (
                    0,
                    PageNotice {
                        account: "acct-1".into(),
                        last_version: 6,
                        appended_at_ms: 1_700_000_000_500
                    }
                ),
                (
                    3,
                    PageNotice {
                        account: "acct-2".into(),
                        last_version: 1,
                        appended_at_ms: 42
                    }
                ),
            ]
        );
        assert_eq!(batch.records[3].dynamodb.sequence_number, "103");
    }

    #[test]
    fn a_page_insert_with_an_unreadable_version_is_no_notice() {
        assert_eq!(
            page_notice(Some("a"), Some("v#1"), Some("x"), "INSERT", 0),
            None
        );
        assert_eq!(page_notice(Some("a"), Some("v#1"), None, "INSERT", 0), None);
    }
}
