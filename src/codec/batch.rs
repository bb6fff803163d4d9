//! A batch of stream records, transport-neutral: for each record its shard, its sequence
//! number and its bytes. This is the projector's whole input; Lambda's Kinesis event JSON
//! ([`super::kinesis`]), the embedded stream and the Kinesis poller all fill one.
//!
//! Record bytes live in one buffer, each record starting on a 16-byte boundary so that
//! archives are read in place; sequence numbers share one string buffer. A batch is meant to
//! be reused ([`RecordBatch::clear`]) so a warm process allocates nothing per batch. It never
//! interprets the bytes: decoding (and rejecting) them is the projector's job.

use base64_simd::{Out, STANDARD};
use rkyv::util::AlignedVec;

use super::CodecError;
use super::record::PAYLOAD_ALIGN;

/// Where one record's bytes and sequence number sit in the shared buffers.
#[derive(Debug, Clone)]
struct Slot {
    /// `Err` when the transport's encoding of the bytes (base64) was invalid: the record is
    /// kept, so it can be quarantined and reported by index like any other poison.
    data: Result<(usize, usize), CodecError>,
    sequence: (usize, usize),
    shard: usize,
}

/// Records of one delivery, in delivery order. Failures are reported by record index.
#[derive(Default)]
pub struct RecordBatch {
    bytes: AlignedVec,
    sequences: String,
    shards: Vec<String>,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBatch")
            .field("records", &self.slots.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl RecordBatch {
    pub fn new() -> RecordBatch {
        RecordBatch::default()
    }

    /// Empties the batch, keeping its buffers for the next one.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.sequences.clear();
        self.shards.clear();
        self.slots.clear();
    }

    /// Reserves room for about `records` records of `bytes` decoded bytes in total.
    pub fn reserve(&mut self, records: usize, bytes: usize) {
        let bytes = bytes + records * PAYLOAD_ALIGN;
        if self.bytes.is_empty() && self.bytes.capacity() < bytes {
            // A fresh buffer: growing an empty one would copy its old capacity for nothing.
            self.bytes = AlignedVec::with_capacity(bytes);
        }
        self.bytes.reserve(bytes);
        self.slots.reserve(records);
        self.sequences.reserve(records * 56);
    }

    fn shard_index(&mut self, shard: &str) -> usize {
        match self.shards.iter().rposition(|s| s == shard) {
            Some(i) => i,
            None => {
                self.shards.push(shard.to_owned());
                self.shards.len() - 1
            }
        }
    }

    fn push_slot(
        &mut self,
        shard: &str,
        sequence_number: &str,
        data: Result<(usize, usize), CodecError>,
    ) {
        let start = self.sequences.len();
        self.sequences.push_str(sequence_number);
        let shard = self.shard_index(shard);
        self.slots.push(Slot {
            data,
            sequence: (start, self.sequences.len()),
            shard,
        });
    }

    /// Appends one record given as raw bytes (copied to an aligned position).
    pub fn push(&mut self, shard: &str, sequence_number: &str, data: &[u8]) {
        let start = self.bytes.len().next_multiple_of(PAYLOAD_ALIGN);
        self.bytes.resize(start, 0);
        self.bytes.extend_from_slice(data);
        let span = (start, self.bytes.len());
        self.push_slot(shard, sequence_number, Ok(span));
    }

    /// Appends one record given as standard base64 (as Lambda's JSON carries it), decoded in
    /// place. Invalid base64 is kept as the record's error.
    pub fn push_base64(&mut self, shard: &str, sequence_number: &str, base64: &[u8]) {
        let start = self.bytes.len().next_multiple_of(PAYLOAD_ALIGN);
        // `decoded_length` validates length and padding, so `decode` below cannot panic on
        // a short destination.
        let decoded = STANDARD.decoded_length(base64).and_then(|n| {
            self.bytes.resize(start + n, 0);
            STANDARD
                .decode(base64, Out::from_slice(&mut self.bytes[start..start + n]))
                .map(|d| d.len())
        });
        let span = match decoded {
            Ok(n) => Ok((start, start + n)),
            Err(e) => {
                self.bytes.resize(start, 0);
                Err(CodecError::Base64(e.to_string()))
            }
        };
        self.push_slot(shard, sequence_number, span);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Total bytes of all records (with alignment padding): a size hint for decoders.
    pub fn data_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The bytes of record `i` (16-byte aligned), or why the transport could not give them.
    pub fn data(&self, i: usize) -> Result<&[u8], CodecError> {
        match self.slots.get(i).map(|s| &s.data) {
            Some(Ok((start, end))) => Ok(&self.bytes[*start..*end]),
            Some(Err(e)) => Err(e.clone()),
            None => Err(CodecError::Invalid {
                what: "record index",
                detail: i.to_string(),
            }),
        }
    }

    /// The sequence number of record `i` (empty past the end).
    pub fn sequence_number(&self, i: usize) -> &str {
        self.slots
            .get(i)
            .map_or("", |s| &self.sequences[s.sequence.0..s.sequence.1])
    }

    /// The shard record `i` came from (empty past the end).
    pub fn shard(&self, i: usize) -> &str {
        self.slots
            .get(i)
            .map_or("", |s| self.shards[s.shard].as_str())
    }

    /// Index of the record with this sequence number on this shard.
    pub fn position(&self, shard: &str, sequence_number: &str) -> Option<usize> {
        (0..self.len())
            .find(|&i| self.sequence_number(i) == sequence_number && self.shard(i) == shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_shard_sequence_and_aligned_bytes() {
        let mut b = RecordBatch::new();
        b.push("s-1", "100", b"abc");
        b.push_base64("s-2", "7", b"aGVsbG8=");
        b.push_base64("s-1", "101", b"not base64!");
        assert_eq!(b.len(), 3);
        assert_eq!(b.data(0).unwrap(), b"abc");
        assert_eq!(b.data(1).unwrap(), b"hello");
        assert!(matches!(b.data(2), Err(CodecError::Base64(_))));
        assert!(b.data(3).is_err());
        assert_eq!((b.shard(1), b.sequence_number(1)), ("s-2", "7"));
        assert_eq!((b.shard(2), b.sequence_number(2)), ("s-1", "101"));
        assert_eq!(b.position("s-1", "101"), Some(2));
        for i in 0..2 {
            assert!((b.data(i).unwrap().as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGN));
        }
        b.clear();
        assert!(b.is_empty());
    }
}
