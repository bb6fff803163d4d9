//! The bulk row format: CSV and NDJSON give the same commands; every bad row is named by
//! line and field, and the reader goes on to the next row.

use tally::codec::rows::{Format, Row, RowError, RowReader};
use tally::domain::{Command, Money};

const CSV: &str = "\
txn_id,account,kind,amount,occurred_at,reverses
t-1,acct-1,deposit,10000,2026-11-01T09:00:00Z,
t-2,acct-1,withdrawal,2500,2026-11-02T09:00:00Z,
t-3,acct-1,reversal,,2026-11-03T09:00:00Z,t-2
";

const NDJSON: &str = r#"{"txn_id":"t-1","account":"acct-1","kind":"deposit","amount":10000,"occurred_at":"2026-11-01T09:00:00Z"}
{"txn_id":"t-2","account":"acct-1","kind":"withdrawal","amount":"2500","occurred_at":"2026-11-02T09:00:00Z","reverses":null}

{"txn_id":"t-3","account":"acct-1","kind":"reversal","occurred_at":"2026-11-03T09:00:00Z","reverses":"t-2"}
"#;

fn read(text: &str, format: Format) -> Vec<Result<Row, RowError>> {
    RowReader::new(text.as_bytes(), format).unwrap().collect()
}

#[test]
fn csv_and_ndjson_of_the_design_example_give_the_same_commands() {
    let csv: Vec<Row> = read(CSV, Format::Csv)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let nd: Vec<Row> = read(NDJSON, Format::Ndjson)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(csv.len(), 3);
    let commands = |rows: &[Row]| {
        rows.iter()
            .map(|r| (r.account.to_string(), r.command.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(commands(&csv), commands(&nd));
    assert_eq!(csv.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(nd.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 4]);
    assert!(matches!(
        &csv[1].command,
        Command::Withdraw {
            amount: Money(2500),
            ..
        }
    ));
    assert!(
        matches!(&csv[2].command, Command::Reverse { reverses, .. } if reverses.as_str() == "t-2")
    );
    assert_eq!(Format::sniff(NDJSON.as_bytes()), Format::Ndjson);
    assert_eq!(Format::sniff(CSV.as_bytes()), Format::Csv);
}

#[test]
fn each_bad_row_names_its_line_and_field_and_the_reader_goes_on() {
    let text = "\
txn_id,account,kind,amount,occurred_at,reverses
t-1,acct 1,deposit,100,2026-11-01T09:00:00Z,
t-2,acct-1,deposit,10.50,2026-11-01T09:00:00Z,
t-3,acct-1,refund,100,2026-11-01T09:00:00Z,
t-4,acct-1,deposit,100,yesterday,
t-5,acct-1,reversal,100,2026-11-01T09:00:00Z,t-1
t-6,acct-1,deposit,,2026-11-01T09:00:00Z,
,acct-1,deposit,1,2026-11-01T09:00:00Z,
t-8,acct-1,withdrawal,99999999999999999999,2026-11-01T09:00:00Z,
t-9,acct-1,deposit,5,2026-11-01T09:00:00Z,t-1
t-10,acct-1,deposit,7,2026-11-01T09:00:00Z,
";
    let rows = read(text, Format::Csv);
    let errors: Vec<(u64, Option<&str>)> = rows
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| (e.line, e.field))
        .collect();
    assert_eq!(
        errors,
        [
            (2, Some("account")),
            (3, Some("amount")),
            (4, Some("kind")),
            (5, Some("occurred_at")),
            (6, Some("amount")),
            (7, Some("amount")),
            (8, Some("txn_id")),
            (9, Some("amount")),
            (10, Some("reverses")),
        ]
    );
    let last = rows.last().unwrap().as_ref().unwrap();
    assert_eq!((last.line, last.command.txn_id().as_str()), (11, "t-10"));
    let message = rows[3].as_ref().unwrap_err().to_string();
    assert!(
        message.starts_with("line 5, field occurred_at:") && message.contains("RFC 3339"),
        "{message}"
    );
}

#[test]
fn a_wrong_header_stops_before_any_row() {
    let err = RowReader::new(
        "txn_id,acount,kind,amount,occurred_at\n".as_bytes(),
        Format::Csv,
    )
    .err()
    .unwrap();
    assert!(
        err.fatal && err.message.contains("unknown column \"acount\""),
        "{err}"
    );
    let err = RowReader::new("txn_id,kind,amount,occurred_at\n".as_bytes(), Format::Csv)
        .err()
        .unwrap();
    assert!(err.message.contains("missing column \"account\""), "{err}");
}

#[test]
fn ndjson_errors_name_the_field_too() {
    let text = "{\"txn_id\":\"t-1\",\"account\":\"a\",\"kind\":\"deposit\",\"amount\":1.5,\"occurred_at\":\"2026-11-01T09:00:00Z\"}\n\
                {\"txn_id\":7,\"account\":\"a\",\"kind\":\"deposit\",\"amount\":1,\"occurred_at\":\"2026-11-01T09:00:00Z\"}\n\
                {\"txn\":\"t-3\"}\n\
                not json\n";
    let errors: Vec<RowError> = read(text, Format::Ndjson)
        .into_iter()
        .map(Result::unwrap_err)
        .collect();
    assert_eq!(
        errors.iter().map(|e| (e.line, e.field)).collect::<Vec<_>>(),
        [
            (1, Some("amount")),
            (2, Some("txn_id")),
            (3, None),
            (4, None)
        ]
    );
    assert!(
        errors[2].message.contains("unknown field `txn`"),
        "{}",
        errors[2]
    );
}

/// A CSV row is named by the line it starts on, as an editor shows it: after blank lines,
/// after a quoted field spanning lines, with CRLF endings, and as the last line without a
/// newline. Found from the outside: a row after blank lines was named by the first of them.
#[test]
fn csv_rows_are_named_by_their_own_line_after_blank_and_multi_line_ones() {
    let text = "txn_id,account,kind,amount,occurred_at,reverses\n\
                q1,A,deposit,5,2026-11-01T09:00:00Z,\n\
                \n\
                q2,A,deposit,x,2026-11-01T09:00:00Z,\n\
                \n\
                \n\
                \n\
                q3,A,deposit,7,2026-11-01T09:00:00Z,\n\
                \"q4\",A,deposit,\"8\",\"2026-11-01\n09:00:00Z\",\n\
                q5,A,deposit,9,2026-11-01T09:00:00Z,\n\
                \n\
                q6,A,deposit,10,2026-11-01T09:00:00Z,";
    let lines = |text: &str| -> Vec<u64> {
        read(text, Format::Csv)
            .iter()
            .map(|r| match r {
                Ok(row) => row.line,
                Err(e) => e.line,
            })
            .collect()
    };
    assert_eq!(lines(text), [2, 4, 8, 9, 11, 13]);
    assert_eq!(lines(&text.replace('\n', "\r\n")), [2, 4, 8, 9, 11, 13]);
    assert_eq!(lines(&format!("{text}\n")), [2, 4, 8, 9, 11, 13]);
    // Quoted fields that end (or begin) with newlines, which trimming removes from the
    // value: the row still starts where it starts. Found from the outside: named 4 and 6.
    let edges = "txn_id,account,kind,amount,occurred_at,reverses\n\
                 \"w1\n\n\",a1,withdrawal,999,2026-01-01T00:00:00Z,\n\
                 w2,a1,withdrawal,\"999\n\",2026-01-01T00:00:00Z,\n\
                 \"\n w3\",a1,deposit,1,2026-01-01T00:00:00Z,\n";
    assert_eq!(lines(edges), [2, 5, 7]);
    let ids: Vec<String> = read(edges, Format::Csv)
        .into_iter()
        .map(|r| r.unwrap().command.txn_id().to_string())
        .collect();
    assert_eq!(ids, ["w1", "w2", "w3"], "values are trimmed");
}

/// An invalid NDJSON row keeps the names it has as strings, whatever is wrong with it (a
/// wrongly typed field, an unknown field, a bad amount). Found from the outside: a
/// non-string `reverses` lost both names.
#[test]
fn invalid_ndjson_rows_keep_their_string_names() {
    let text = concat!(
        r#"{"txn_id":"m9","account":"a1","kind":"deposit","amount":1,"occurred_at":"2026-01-01T00:00:00Z","reverses":5}"#,
        "\n",
        r#"{"txn_id":5,"account":"a2","kind":"deposit","amount":1,"occurred_at":"2026-01-01T00:00:00Z"}"#,
        "\n",
        r#"{"txn_id":"m3","account":"a3","kind":"deposit","amount":1,"occurred_at":"2026-01-01T00:00:00Z","extra":1}"#,
        "\n",
        r#"{"txn_id":"m4","account":"a4","kind":"deposit","amount":"x","occurred_at":"2026-01-01T00:00:00Z"}"#,
        "\n",
        "not json\n",
    );
    let names: Vec<(Option<String>, Option<String>)> = read(text, Format::Ndjson)
        .into_iter()
        .map(|r| {
            let e = r.unwrap_err();
            (e.txn_id, e.account)
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        names,
        [
            (some("m9"), some("a1")),
            (None, some("a2")),
            (some("m3"), some("a3")),
            (some("m4"), some("a4")),
            (None, None),
        ]
    );
}
