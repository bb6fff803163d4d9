//! The byte envelope of every stored page and stream record:
//!
//! ```text
//! 0..4   magic  b"TLLY"
//! 4      format version (1)
//! 5      kind: 1 = aggregate (stream record), 2 = page (event store)
//! 6..8   reserved, zero
//! 8..12  payload length, u32 little-endian
//! 12..16 CRC-32 (IEEE) of the payload, u32 little-endian
//! 16..   rkyv 0.8 archive of `WireAggregate` or `WirePage`
//! ```
//!
//! The checksum makes every single-bit flip and every truncation an error, before rkyv even
//! looks at the bytes; rkyv's `access` (bytecheck) then validates the structure. Decoding
//! never uses unchecked access. Kinesis hands data over at any address, so a payload that is
//! not 16-byte aligned is copied into an aligned scratch buffer first.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::CodecError;
use super::wire::{ArchivedWireAggregate, ArchivedWirePage, WireAggregate, WirePage};

pub const MAGIC: [u8; 4] = *b"TLLY";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 16;
/// Alignment of archived payloads, and of [`AlignedVec`]'s buffer.
pub const PAYLOAD_ALIGN: usize = 16;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Aggregate = 1,
    Page = 2,
}

fn encode_with<T>(kind: RecordKind, value: &T) -> Result<AlignedVec, CodecError>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        >,
{
    let mut buf = AlignedVec::with_capacity(256);
    buf.extend_from_slice(&[0u8; HEADER_BYTES]);
    // The archive is written after the header; its relative pointers do not reach before
    // its own start, so the payload slice is a complete archive on its own.
    let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, buf)
        .map_err(|e| CodecError::Archive(e.to_string()))?;
    let payload_len = buf.len() - HEADER_BYTES;
    let len =
        u32::try_from(payload_len).map_err(|_| CodecError::TooLarge { bytes: payload_len })?;
    let crc = crc32fast::hash(&buf[HEADER_BYTES..]);
    let header = &mut buf[..HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = FORMAT_VERSION;
    header[5] = kind as u8;
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Encodes one stream record. Use [`super::aggregate::encode_records`] to respect the
/// record size limit.
pub fn encode_aggregate(aggregate: &WireAggregate) -> Result<AlignedVec, CodecError> {
    encode_with(RecordKind::Aggregate, aggregate)
}

/// Encodes one stored page of the event store.
pub fn encode_page(page: &WirePage) -> Result<AlignedVec, CodecError> {
    encode_with(RecordKind::Page, page)
}

/// Checks the header and checksum; returns the payload.
fn payload(kind: RecordKind, bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER_BYTES {
        return Err(CodecError::Truncated { len: bytes.len() });
    }
    let (header, payload) = bytes.split_at(HEADER_BYTES);
    if header[0..4] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    if header[4] != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion(header[4]));
    }
    if header[5] != kind as u8 {
        return Err(CodecError::WrongKind {
            expected: kind as u8,
            found: header[5],
        });
    }
    if header[6..8] != [0, 0] {
        return Err(CodecError::ReservedBits);
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let declared = word(8) as usize;
    if declared != payload.len() {
        return Err(CodecError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    let computed = crc32fast::hash(payload);
    if word(12) != computed {
        return Err(CodecError::Checksum {
            declared: word(12),
            computed,
        });
    }
    Ok(payload)
}

/// A stream record's aggregate read in place, validated. The record must start at a
/// 16-byte boundary (as in a [`super::kinesis::Arena`]); otherwise this returns
/// [`CodecError::Misaligned`] and the caller should use a [`Decoder`], which copies.
pub fn access_aggregate(bytes: &[u8]) -> Result<&ArchivedWireAggregate, CodecError> {
    let payload = payload(RecordKind::Aggregate, bytes)?;
    if !(payload.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGN) {
        return Err(CodecError::Misaligned);
    }
    // The low-level validator: bounds, alignment and subtree checks, without the shared-
    // pointer registry the high-level one keeps (our archives hold no shared pointers).
    rkyv::api::low::access::<ArchivedWireAggregate, rancor::Error>(payload)
        .map_err(|e| CodecError::Archive(e.to_string()))
}

/// Validating decoder with a reusable scratch buffer for misaligned input.
#[derive(Default)]
pub struct Decoder {
    scratch: AlignedVec,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    fn aligned<'a>(&'a mut self, payload: &'a [u8]) -> &'a [u8] {
        if (payload.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGN) {
            payload
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(payload);
            &self.scratch
        }
    }

    /// A stream record's aggregate, validated, read in place where alignment allows.
    pub fn aggregate<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> Result<&'a ArchivedWireAggregate, CodecError> {
        let payload = self.aligned(payload(RecordKind::Aggregate, bytes)?);
        rkyv::access::<ArchivedWireAggregate, rancor::Error>(payload)
            .map_err(|e| CodecError::Archive(e.to_string()))
    }

    /// A stored page, validated.
    pub fn page<'a>(&'a mut self, bytes: &'a [u8]) -> Result<&'a ArchivedWirePage, CodecError> {
        let payload = self.aligned(payload(RecordKind::Page, bytes)?);
        rkyv::access::<ArchivedWirePage, rancor::Error>(payload)
            .map_err(|e| CodecError::Archive(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_where_the_format_says() {
        let bytes = encode_aggregate(&WireAggregate::default()).unwrap();
        assert_eq!(&bytes[0..4], b"TLLY");
        assert_eq!(bytes[4], FORMAT_VERSION);
        assert_eq!(bytes[5], RecordKind::Aggregate as u8);
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - HEADER_BYTES);
        assert!(Decoder::new().aggregate(&bytes).unwrap().pages.is_empty());
    }

    #[test]
    fn a_page_is_not_accepted_as_an_aggregate() {
        let page = WirePage {
            account: "a".into(),
            first_version: 1,
            events: vec![],
        };
        let bytes = encode_page(&page).unwrap();
        let err = Decoder::new().aggregate(&bytes).unwrap_err();
        assert_eq!(
            err,
            CodecError::WrongKind {
                expected: 1,
                found: 2
            }
        );
    }
}
