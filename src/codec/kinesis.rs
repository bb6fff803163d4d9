//! Lambda's Kinesis event JSON in, a [`RecordBatch`] out; and the partial-batch response
//! JSON back. Only the Lambda entry point uses this: the projector itself never sees JSON.
//!
//! The event wraps each record in ~550 bytes of fields the projector never reads
//! (`eventSourceARN`, `awsRegion`, …); a general deserializer spends most of a batch's time
//! on them. This reader is written for that one shape: it walks the JSON once, validating
//! its structure (objects, arrays, strings with their escapes, numbers, literals, nesting
//! depth), reads `eventID` (for the shard), `kinesis.sequenceNumber` and `kinesis.data`, and
//! decodes `data`'s base64 straight into the batch's aligned buffer. Keys may come in any
//! order and carry escapes. Values it skips are checked for structure only: their strings
//! are not checked for UTF-8 or control characters, since nothing reads them.
//!
//! It must never panic or read out of bounds on any input; every malformed event is an
//! [`EventError`] naming the byte offset.

use std::borrow::Cow;

use serde::Serialize;

use super::batch::RecordBatch;

/// Nesting allowed in skipped values; Lambda's event nests 3 deep.
const DEPTH_MAX: u32 = 64;

/// Why an invocation payload is not a Kinesis event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Lambda Kinesis event at byte {at}: {what}")]
pub struct EventError {
    pub at: usize,
    pub what: &'static str,
}

/// Reads a Lambda Kinesis event into `batch` (cleared first). A record whose `data` is not
/// valid base64 is kept as a record with an error, to be quarantined by index; anything
/// else malformed rejects the whole payload.
pub fn read_event(json: &[u8], batch: &mut RecordBatch) -> Result<(), EventError> {
    batch.clear();
    batch.reserve(json.len() / 700 + 1, json.len() / 2);
    let mut r = Reader { s: json, i: 0 };
    let mut records = false;
    r.object(|r, key| {
        if key.is("Records")? {
            if std::mem::replace(&mut records, true) {
                return Err(r.err("duplicate Records"));
            }
            r.array(|r| read_record(r, batch))
        } else {
            r.skip_value(0)
        }
    })?;
    r.ws();
    if r.i != json.len() {
        return Err(r.err("trailing characters"));
    }
    if !records {
        return Err(r.err("no Records"));
    }
    Ok(())
}

fn read_record(r: &mut Reader<'_>, batch: &mut RecordBatch) -> Result<(), EventError> {
    let mut event_id: Option<Str<'_>> = None;
    let mut sequence: Option<Str<'_>> = None;
    let mut data: Option<Str<'_>> = None;
    let start = r.i;
    r.object(|r, key| {
        if key.is("eventID")? {
            if r.peek() == Some(b'n') {
                return r.literal(b"null");
            }
            set_once(r, &mut event_id, "duplicate eventID")
        } else if key.is("kinesis")? {
            r.object(|r, key| {
                if key.is("sequenceNumber")? {
                    set_once(r, &mut sequence, "duplicate sequenceNumber")
                } else if key.is("data")? {
                    set_once(r, &mut data, "duplicate data")
                } else {
                    r.skip_value(1)
                }
            })
        } else {
            r.skip_value(0)
        }
    })?;
    let err = |what| EventError { at: start, what };
    let sequence = sequence.ok_or_else(|| err("record without kinesis.sequenceNumber"))?;
    let data = data.ok_or_else(|| err("record without kinesis.data"))?;
    let sequence = sequence
        .text()
        .map_err(|_| err("sequenceNumber is not text"))?;
    let event_id = match &event_id {
        Some(id) => Some(id.text().map_err(|_| err("eventID is not text"))?),
        None => None,
    };
    // `shardId-000000000006:4959…`: the shard is what precedes the colon.
    let shard = event_id
        .as_deref()
        .and_then(|id| id.split_once(':'))
        .map_or("unknown", |(shard, _)| shard);
    batch.push_base64(
        shard,
        &sequence,
        &data.bytes().map_err(|_| err("bad escape in data"))?,
    );
    Ok(())
}

fn set_once<'a>(
    r: &mut Reader<'a>,
    slot: &mut Option<Str<'a>>,
    duplicate: &'static str,
) -> Result<(), EventError> {
    if slot.is_some() {
        return Err(r.err(duplicate));
    }
    *slot = Some(r.string()?);
    Ok(())
}

/// A JSON string's raw contents, escapes unresolved.
#[derive(Clone, Copy)]
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Str<'a> {
    /// The unescaped bytes.
    fn bytes(&self) -> Result<Cow<'a, [u8]>, ()> {
        if !self.escaped {
            return Ok(Cow::Borrowed(self.raw));
        }
        unescape(self.raw).map(|s| Cow::Owned(s.into_bytes()))
    }

    /// The unescaped text (UTF-8 checked).
    fn text(&self) -> Result<Cow<'a, str>, ()> {
        if !self.escaped {
            return std::str::from_utf8(self.raw)
                .map(Cow::Borrowed)
                .map_err(|_| ());
        }
        unescape(self.raw).map(Cow::Owned)
    }

    fn is(&self, key: &str) -> Result<bool, EventError> {
        if !self.escaped {
            return Ok(self.raw == key.as_bytes());
        }
        Ok(self.text().is_ok_and(|t| t == key))
    }
}

fn hex4(s: &[u8]) -> Option<u32> {
    let s = s.get(..4)?;
    let text = std::str::from_utf8(s).ok()?;
    u32::from_str_radix(text, 16)
        .ok()
        .filter(|_| s.iter().all(u8::is_ascii_hexdigit))
}

/// Resolves JSON escapes (already checked for shape by [`Reader::string`]).
fn unescape(raw: &[u8]) -> Result<String, ()> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let c = *raw.get(i + 1).ok_or(())?;
        i += 2;
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = hex4(&raw[i..]).ok_or(())?;
                i += 4;
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate must be followed by `\u` and a low one.
                    let low = match raw.get(i..i + 2) {
                        Some(b"\\u") => hex4(&raw[i + 2..]).ok_or(())?,
                        _ => return Err(()),
                    };
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(());
                    }
                    i += 6;
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                }
                let ch = char::from_u32(code).ok_or(())?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            _ => return Err(()),
        };
        out.push(simple);
    }
    String::from_utf8(out).map_err(|_| ())
}

/// A cursor over the JSON bytes.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &'static str) -> EventError {
        EventError { at: self.i, what }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, b: u8, what: &'static str) -> Result<(), EventError> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// A string starting at the cursor; escapes are checked for shape and left in place.
    fn string(&mut self) -> Result<Str<'a>, EventError> {
        self.eat(b'"', "expected a string")?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = &self.s[self.i..];
            let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(self.err("unterminated string"));
            };
            self.i += at;
            if self.s[self.i] == b'"' {
                let raw = &self.s[start..self.i];
                self.i += 1;
                return Ok(Str { raw, escaped });
            }
            escaped = true;
            match self.s.get(self.i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                Some(b'u') if hex4(self.s.get(self.i + 2..).unwrap_or_default()).is_some() => {
                    self.i += 6
                }
                _ => return Err(self.err("invalid escape")),
            }
        }
    }

    /// `{ "key": value, … }`, calling `field` with the cursor on each value.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Str<'a>) -> Result<(), EventError>,
    ) -> Result<(), EventError> {
        self.eat(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':', "expected ':'")?;
            field(self, key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    /// `[ value, … ]`, calling `item` with the cursor on each value.
    fn array(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), EventError>,
    ) -> Result<(), EventError> {
        self.eat(b'[', "expected an array")?;
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), EventError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), EventError> {
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let first = self.s.get(self.i).copied();
        let n = self.digits();
        if n == 0 || (first == Some(b'0') && n > 1) {
            return Err(self.err("invalid number"));
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    /// Any value, checked for structure and discarded.
    fn skip_value(&mut self, depth: u32) -> Result<(), EventError> {
        if depth > DEPTH_MAX {
            return Err(self.err("nested too deep"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(|r, _| r.skip_value(depth + 1)),
            Some(b'[') => self.array(|r| r.skip_value(depth + 1)),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a value")),
        }
    }
}

/// Lambda's partial batch response for a Kinesis event source mapping
/// (`ReportBatchItemFailures`): Lambda retries the shard from the lowest reported sequence
/// number. An empty list means the whole batch is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub batch_item_failures: Vec<ItemFailure>,
}

/// One reported record, by its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    pub item_identifier: String,
}

impl BatchResponse {
    /// The response reporting records `failed` (indices into `batch`).
    pub fn failures(batch: &RecordBatch, failed: &[usize]) -> BatchResponse {
        BatchResponse {
            batch_item_failures: failed
                .iter()
                .map(|&i| ItemFailure {
                    item_identifier: batch.sequence_number(i).to_owned(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<RecordBatch, EventError> {
        let mut b = RecordBatch::new();
        read_event(json.as_bytes(), &mut b).map(|()| b)
    }

    #[test]
    fn fields_are_found_in_any_order_with_escapes_and_unknown_values_skipped() {
        let b = read(
            r#" { "x": [1, -2.5e+3, true, false, null, {"a": [[]]}, "q\"\\"],
              "Records": [
                {"kinesis": {"data": "aGk=", "partitionKey": "b1", "sequenceNumber": "7"},
                 "eventID": "shardId-1:7", "n": 0.5},
                {"eventID": null, "kinesis": {"sequenceNumber": "8", "data": "aGlcLw\u003d\u003d",
                 "approximateArrivalTimestamp": 1545084650.987}},
                {"kinesis": {"sequenceNumber": "\u0039", "data": "a\/8="}, "e\u0076entID": "s:9"}
              ] } "#,
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!((b.shard(0), b.sequence_number(0)), ("shardId-1", "7"));
        assert_eq!(b.data(0).unwrap(), b"hi");
        assert_eq!((b.shard(1), b.sequence_number(1)), ("unknown", "8"));
        assert_eq!(b.data(1).unwrap(), b"hi\\/");
        assert_eq!((b.shard(2), b.sequence_number(2)), ("s", "9"));
        assert_eq!(b.data(2).unwrap(), [0x6b, 0xff]);
    }

    #[test]
    fn malformed_events_are_errors_never_panics() {
        let cases = [
            "",
            "[]",
            "{}",
            r#"{"Records": {}}"#,
            r#"{"Records": [{"kinesis": {"data": "aGk="}}]}"#,
            r#"{"Records": [{"kinesis": {"sequenceNumber": "1"}}]}"#,
            r#"{"Records": [{"kinesis": {"sequenceNumber": "1", "data": "a", "data": "b"}}]}"#,
            r#"{"Records": [], "Records": []}"#,
            r#"{"Records": []} x"#,
            r#"{"Records": [1,]}"#,
            r#"{"Records": [], "n": 01}"#,
            r#"{"Records": [], "n": 1.}"#,
            r#"{"Records": [], "n": -}"#,
            r#"{"Records": [], "s": "\x"}"#,
            r#"{"Records": [], "s": "\u12"}"#,
            r#"{"Records": [], "s": "open"#,
            r#"{"Records": [], "t": tru}"#,
            r#"{"Records": [{"kinesis": {"sequenceNumber": "\ud800", "data": ""}}]}"#,
        ];
        for case in cases {
            assert!(read(case).is_err(), "accepted {case:?}");
        }
        let deep = format!(
            r#"{{"Records": [], "d": {}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(read(&deep).unwrap_err().what, "nested too deep");
        // Every prefix of a valid event is an error, never a panic.
        let valid =
            r#"{"Records":[{"kinesis":{"sequenceNumber":"1","data":"aGk="},"eventID":"s:1"}]}"#;
        assert!(read(valid).is_ok());
        for end in 0..valid.len() {
            assert!(read(&valid[..end]).is_err());
        }
    }

    #[test]
    fn bad_base64_is_a_record_error_not_a_payload_error() {
        let b = read(r#"{"Records":[{"kinesis":{"sequenceNumber":"1","data":"%%%"}}]}"#).unwrap();
        assert!(b.data(0).is_err());
        assert_eq!(b.sequence_number(0), "1");
    }

    #[test]
    fn the_response_has_lambdas_field_names() {
        let mut b = RecordBatch::new();
        b.push("s", "41", b"");
        b.push("s", "42", b"");
        let json = serde_json::to_string(&BatchResponse::failures(&b, &[1])).unwrap();
        assert_eq!(json, r#"{"batchItemFailures":[{"itemIdentifier":"42"}]}"#);
    }
}
