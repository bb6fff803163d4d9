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
    // Base64 data is nearly all of a large event; it decodes to three quarters of its size.
    batch.reserve(json.len() / 700 + 1, json.len() / 4 * 3);
    let mut r = Reader {
        s: json,
        i: 0,
        escaped: false,
        error: None,
    };
    let mut records = false;
    let read = r
        .object(|r, key| match key.name() {
            Key::Records if std::mem::replace(&mut records, true) => {
                Err(r.fail("duplicate Records"))
            }
            Key::Records => r.array(|r| read_record(r, batch)),
            _ => r.skip_value(0),
        })
        .and_then(|()| {
            r.ws();
            if r.i != json.len() {
                return Err(r.fail("trailing characters"));
            }
            if !records {
                return Err(r.fail("no Records"));
            }
            Ok(())
        });
    read.map_err(|Fail| {
        r.error.take().unwrap_or(EventError {
            at: r.i,
            what: "invalid",
        })
    })
}

fn read_record(r: &mut Reader<'_>, batch: &mut RecordBatch) -> Result<(), Fail> {
    let mut event_id: Option<Str<'_>> = None;
    let mut sequence: Option<Str<'_>> = None;
    let mut data: Option<Str<'_>> = None;
    let start = r.i;
    r.object(|r, key| match key.name() {
        Key::EventId if r.peek() == Some(b'n') => r.literal(b"null"),
        Key::EventId => set_once(r, &mut event_id, "duplicate eventID"),
        Key::Kinesis => r.object(|r, key| match key.name() {
            Key::SequenceNumber => set_once(r, &mut sequence, "duplicate sequenceNumber"),
            Key::Data => set_once(r, &mut data, "duplicate data"),
            _ => r.skip(1),
        }),
        _ => r.skip(0),
    })?;
    let mut err = |what| r.fail_at(start, what);
    let (Some(sequence), Some(data)) = (sequence, data) else {
        return Err(err("record without kinesis.sequenceNumber or kinesis.data"));
    };
    let Ok(sequence) = sequence.text() else {
        return Err(err("sequenceNumber is not text"));
    };
    // `shardId-000000000006:4959…`: the shard is what precedes the colon (only that part
    // is read, and checked as text).
    let shard = match event_id.map(|id| id.shard()) {
        Some(Ok(shard)) => shard,
        Some(Err(())) => return Err(err("eventID is not text")),
        None => None,
    };
    let Ok(data) = data.bytes() else {
        return Err(err("bad escape in data"));
    };
    batch.push_base64(shard.as_deref().unwrap_or("unknown"), &sequence, &data);
    Ok(())
}

fn set_once<'a>(
    r: &mut Reader<'a>,
    slot: &mut Option<Str<'a>>,
    duplicate: &'static str,
) -> Result<(), Fail> {
    if slot.is_some() {
        return Err(r.fail(duplicate));
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

    /// The part of an `eventID` before its colon, if it has one.
    fn shard(&self) -> Result<Option<Cow<'a, str>>, ()> {
        if self.escaped {
            let id = self.text()?;
            return Ok(id
                .split_once(':')
                .map(|(shard, _)| Cow::Owned(shard.to_owned())));
        }
        match self.raw.iter().position(|&b| b == b':') {
            Some(colon) => std::str::from_utf8(&self.raw[..colon])
                .map(|shard| Some(Cow::Borrowed(shard)))
                .map_err(|_| ()),
            None => std::str::from_utf8(self.raw).map(|_| None).map_err(|_| ()),
        }
    }

    /// Which of the keys this reader looks for, if any (escaped keys are resolved first).
    #[inline]
    fn name(&self) -> Key {
        if self.escaped {
            return match self.text() {
                Ok(text) => Key::of(text.as_bytes()),
                Err(()) => Key::Other,
            };
        }
        Key::of(self.raw)
    }
}

/// The keys the reader acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Records,
    EventId,
    Kinesis,
    SequenceNumber,
    Data,
    Other,
}

impl Key {
    /// Compared as fixed-size arrays: integer compares, no `memcmp` call per key.
    #[inline(always)]
    fn of(name: &[u8]) -> Key {
        if let Ok(name) = <&[u8; 7]>::try_from(name) {
            return match name {
                b"Records" => Key::Records,
                b"eventID" => Key::EventId,
                b"kinesis" => Key::Kinesis,
                _ => Key::Other,
            };
        }
        match name {
            [b'd', b'a', b't', b'a'] => Key::Data,
            _ if <&[u8; 14]>::try_from(name).is_ok_and(|n| n == b"sequenceNumber") => {
                Key::SequenceNumber
            }
            _ => Key::Other,
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Where in the eight bytes at `s[i..]` the first quote or backslash is (0–7), 8 if none;
/// `None` if fewer than eight bytes are left.
#[inline(always)]
fn quote_or_backslash_in_word(s: &[u8], i: usize) -> Option<usize> {
    let word = u64::from_le_bytes(*s.get(i..)?.first_chunk::<8>()?);
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    // A zero byte of `quote` or `backslash` is a match; the lowest flagged byte is exact.
    let found =
        (quote.wrapping_sub(ONES) & !quote | backslash.wrapping_sub(ONES) & !backslash) & HIGHS;
    Some((found.trailing_zeros() / 8) as usize)
}

/// Index of the first quote or backslash in `s` at or after `from`, by `memchr2`'s vector
/// search (long strings, the end of the input).
#[inline(never)]
fn find_quote_or_backslash(s: &[u8], from: usize) -> Option<usize> {
    memchr::memchr2(b'"', b'\\', s.get(from..)?).map(|at| from + at)
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

/// A reader failed; what and where is in [`Reader::error`]. Zero-sized, so every
/// `Result` of the reader fits in registers.
#[derive(Debug, Clone, Copy)]
struct Fail;

/// A cursor over the JSON bytes.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
    /// Whether the last string read had escapes.
    escaped: bool,
    error: Option<EventError>,
}

impl<'a> Reader<'a> {
    #[cold]
    fn fail_at(&mut self, at: usize, what: &'static str) -> Fail {
        self.error.get_or_insert(EventError { at, what });
        Fail
    }

    #[cold]
    fn fail(&mut self, what: &'static str) -> Fail {
        self.fail_at(self.i, what)
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    #[inline(always)]
    fn eat(&mut self, b: u8, what: &'static str) -> Result<(), Fail> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.fail(what))
        }
    }

    /// A string starting at the cursor; escapes are checked for shape and left in place.
    #[inline(always)]
    fn string(&mut self) -> Result<Str<'a>, Fail> {
        self.eat(b'"', "expected a string")?;
        let start = self.i;
        let end = self.string_end()?;
        Ok(Str {
            raw: &self.s[start..end],
            escaped: self.escaped,
        })
    }

    /// Moves past the closing quote of the string whose contents start at the cursor;
    /// returns the index of that quote and sets `escaped`. Most strings here are short:
    /// up to 64 bytes are scanned eight at a time in registers, then `memchr2` takes over.
    #[inline(always)]
    fn string_end(&mut self) -> Result<usize, Fail> {
        let mut i = self.i;
        for _ in 0..8 {
            match quote_or_backslash_in_word(self.s, i) {
                Some(8) => i += 8,
                Some(at) => {
                    i += at;
                    if self.s.get(i) == Some(&b'"') {
                        self.escaped = false;
                        self.i = i + 1;
                        return Ok(i);
                    }
                    break;
                }
                None => break,
            }
        }
        self.i = i;
        self.escaped_string_end()
    }

    /// [`Reader::string_end`] from the cursor on: long strings, strings with escapes, the
    /// end of the input. `escaped` says whether the string (from its start) had escapes; the
    /// fast path saw none before the cursor.
    #[inline(never)]
    fn escaped_string_end(&mut self) -> Result<usize, Fail> {
        self.escaped = false;
        loop {
            let Some(at) = find_quote_or_backslash(self.s, self.i) else {
                return Err(self.fail("unterminated string"));
            };
            self.i = at + 1;
            if self.s[at] == b'"' {
                return Ok(at);
            }
            self.escaped = true;
            match self.s.get(self.i) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                Some(b'u') if hex4(self.s.get(self.i + 1..).unwrap_or_default()).is_some() => {
                    self.i += 5
                }
                _ => return Err(self.fail("invalid escape")),
            }
        }
    }

    /// `{ "key": value, … }`, calling `field` with the cursor on each value.
    #[inline(always)]
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Str<'a>) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
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
                _ => return Err(self.fail("expected ',' or '}'")),
            }
        }
    }

    /// `[ value, … ]`, calling `item` with the cursor on each value.
    #[inline(always)]
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), Fail>) -> Result<(), Fail> {
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
                _ => return Err(self.fail("expected ',' or ']'")),
            }
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Fail> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.fail("invalid literal"))
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
    fn number(&mut self) -> Result<(), Fail> {
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let first = self.s.get(self.i).copied();
        let n = self.digits();
        if n == 0 || (first == Some(b'0') && n > 1) {
            return Err(self.fail("invalid number"));
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        Ok(())
    }

    /// Any value, checked for structure and discarded; strings (most values) inline.
    #[inline(always)]
    fn skip(&mut self, depth: u32) -> Result<(), Fail> {
        if self.peek() == Some(b'"') {
            self.i += 1;
            return self.string_end().map(drop);
        }
        self.skip_value(depth)
    }

    /// Any value, checked for structure and discarded.
    fn skip_value(&mut self, depth: u32) -> Result<(), Fail> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.string_end().map(drop)
            }
            _ if depth >= DEPTH_MAX => Err(self.fail("nested too deep")),
            Some(b'{') => self.object(|r, _| r.skip_value(depth + 1)),
            Some(b'[') => self.array(|r| r.skip_value(depth + 1)),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.fail("expected a value")),
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

    /// Thousands of mutations of a valid event (bytes replaced by JSON's structural
    /// characters, cut short, duplicated): never a panic, and whatever this reader accepts
    /// is JSON serde_json accepts too, with the same records.
    #[test]
    fn mutated_events_never_panic_and_nothing_invalid_is_accepted() {
        let valid = br#"{"Records":[{"kinesis":{"sequenceNumber":"1","data":"aGk=","n":[1.5,{"a":null}]},"eventID":"s:1"},{"kinesis":{"data":"","sequenceNumber":"2"}}],"x":"\\u00e9\"","y":"\u00e9"}"#;
        let alphabet = b"{}[]:,\"\\ 0-.eE1tfnu";
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut json = valid.to_vec();
            for _ in 0..1 + next() % 2 {
                let at = (next() % json.len() as u64) as usize;
                match next() % 4 {
                    3 => json.insert(at, b' '),
                    0 => json[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => json.truncate(at),
                    _ => {
                        let b = json[at];
                        json.insert(at, b);
                    }
                }
                if json.is_empty() {
                    break;
                }
            }
            let mut batch = RecordBatch::new();
            if read_event(&json, &mut batch).is_ok() {
                accepted += 1;
                let value: serde_json::Value = serde_json::from_slice(&json).unwrap_or_else(|e| {
                    panic!(
                        "accepted invalid JSON ({e}): {}",
                        String::from_utf8_lossy(&json)
                    )
                });
                let records = value["Records"].as_array().expect("Records is an array");
                assert_eq!(records.len(), batch.len());
                for (i, r) in records.iter().enumerate() {
                    assert_eq!(
                        r["kinesis"]["sequenceNumber"].as_str(),
                        Some(batch.sequence_number(i))
                    );
                }
            }
        }
        assert!(
            accepted > 100,
            "the mutations left some valid events ({accepted})"
        );
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
