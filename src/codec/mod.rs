//! Bytes ⇄ domain. Pure functions and plain readers: no sockets, no files opened here, no
//! clock. Everything that reads untrusted bytes returns an error rather than panicking, and
//! rkyv archives are only ever read through validated `access`.

pub mod aggregate;
pub mod batch;
pub mod bucket;
pub mod ddb_stream;
pub mod json;
pub mod kinesis;
pub mod record;
pub mod rows;
pub mod stored;
pub mod time;
pub mod wire;

pub use aggregate::encode_records;
pub use record::{Decoder, access_aggregate, encode_aggregate, encode_page};
pub use wire::{WireAggregate, WireEvent, WireKind, WirePage};

/// Why bytes could not be decoded (or a value not encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record of {len} bytes is shorter than its 16-byte header")]
    Truncated { len: usize },
    #[error("not a tally record (bad magic)")]
    BadMagic,
    #[error("unsupported record format version {0}")]
    UnsupportedVersion(u8),
    #[error("record kind {found} where kind {expected} was expected")]
    WrongKind { expected: u8, found: u8 },
    #[error("reserved header bits are set")]
    ReservedBits,
    #[error("header declares {declared} payload bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("checksum mismatch: header {declared:#010x}, payload {computed:#010x}")]
    Checksum { declared: u32, computed: u32 },
    #[error("archive validation failed: {0}")]
    Archive(String),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{bytes} bytes exceed the record size limit")]
    TooLarge { bytes: usize },
    #[error("record payload is not 16-byte aligned for in-place access")]
    Misaligned,
    #[error("record data is not valid base64: {0}")]
    Base64(String),
}

/// Decodes a whole stream record into domain pages (allocating; for tools and tests, not
/// the hot path, which reads effects in place).
pub fn decode_record_pages(bytes: &[u8]) -> Result<Vec<crate::domain::Page>, CodecError> {
    let mut decoder = Decoder::new();
    let aggregate = decoder.aggregate(bytes)?;
    aggregate.pages.iter().map(|p| p.to_page()).collect()
}

/// Encodes a run of consecutive events of `account` as a stored page (the caller has checked
/// the versions), without building a domain `Page` first.
pub fn encode_events(
    account: &crate::domain::AccountId,
    events: &[crate::domain::Event],
) -> Result<rkyv::util::AlignedVec, CodecError> {
    let first = events.first().ok_or(CodecError::Invalid {
        what: "page",
        detail: "no events".into(),
    })?;
    encode_page(&WirePage {
        account: account.as_str().to_owned(),
        first_version: first.version,
        events: events.iter().map(WireEvent::from_event).collect(),
    })
}

/// Decodes a stored page into its domain form.
pub fn decode_page(bytes: &[u8]) -> Result<crate::domain::Page, CodecError> {
    Decoder::new().page(bytes)?.to_page()
}
