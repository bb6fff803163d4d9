//! Every truncation and every single-bit flip of valid records is an error (the header
//! checksum sees it) — never a panic, never a silently different value — and records are
//! readable at every alignment Kinesis might hand them over at.

use tally::codec::batch::RecordBatch;
use tally::codec::kinesis::read_event;
use tally::codec::{
    CodecError, Decoder, WireAggregate, WirePage, decode_page, decode_record_pages,
    encode_aggregate, encode_page,
};
use tally::domain::{AccountId, Page};

use crate::harness::Ledger;
use crate::reference::RefCmd;

fn sample_pages() -> Vec<Page> {
    let mut pages = Vec::new();
    for (i, acct) in ["acct-1", "acct-2"].iter().enumerate() {
        let mut ledger = Ledger::default();
        ledger.must(
            &RefCmd::Deposit {
                txn: format!("d-{i}"),
                amount: 1_000,
                at: 1_793_523_600_000,
            },
            1_793_523_600_005,
        );
        ledger.must(
            &RefCmd::Withdraw {
                txn: format!("w-{i}"),
                amount: 250,
                at: 1_793_610_000_000,
            },
            1_793_610_000_005,
        );
        ledger.must(
            &RefCmd::Reverse {
                txn: format!("r-{i}"),
                target: format!("w-{i}"),
                at: 1_793_700_000_000,
            },
            1_793_700_000_005,
        );
        pages.push(Page::new(AccountId::new(*acct).unwrap(), ledger.events).unwrap());
    }
    pages
}

fn aggregate_bytes() -> (Vec<u8>, Vec<Page>) {
    let pages = sample_pages();
    let agg = WireAggregate {
        pages: pages.iter().map(WirePage::from_page).collect(),
    };
    (encode_aggregate(&agg).unwrap().to_vec(), pages)
}

#[test]
fn every_truncation_of_a_record_is_an_error() {
    let (bytes, _) = aggregate_bytes();
    for len in 0..bytes.len() {
        let result = decode_record_pages(&bytes[..len]);
        assert!(
            matches!(
                result,
                Err(CodecError::Truncated { .. } | CodecError::LengthMismatch { .. })
            ),
            "len {len}: {result:?}"
        );
    }
    let page = encode_page(&WirePage::from_page(&sample_pages()[0])).unwrap();
    for len in 0..page.len() {
        assert!(
            decode_page(&page[..len]).is_err(),
            "page truncated to {len} decoded"
        );
    }
}

#[test]
fn every_single_bit_flip_of_a_record_is_an_error() {
    let (bytes, pages) = aggregate_bytes();
    assert_eq!(decode_record_pages(&bytes).unwrap(), pages);
    let mut flipped = bytes.clone();
    for bit in 0..bytes.len() * 8 {
        flipped[bit / 8] ^= 1 << (bit % 8);
        let result = decode_record_pages(&flipped);
        assert!(
            result.is_err(),
            "bit {bit} flipped and still decoded: {result:?}"
        );
        flipped[bit / 8] ^= 1 << (bit % 8);
    }
    let page = encode_page(&WirePage::from_page(&pages[1]))
        .unwrap()
        .to_vec();
    let mut flipped = page.clone();
    for bit in 0..page.len() * 8 {
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            decode_page(&flipped).is_err(),
            "page bit {bit} flipped and still decoded"
        );
        flipped[bit / 8] ^= 1 << (bit % 8);
    }
}

#[test]
fn garbage_and_lies_in_the_header_are_named_errors() {
    let (bytes, _) = aggregate_bytes();
    assert_eq!(
        decode_record_pages(b"hello world, not a record"),
        Err(CodecError::BadMagic)
    );
    let mut v = bytes.clone();
    v[4] = 9;
    assert_eq!(
        decode_record_pages(&v),
        Err(CodecError::UnsupportedVersion(9))
    );
    let mut v = bytes.clone();
    v.push(0);
    assert!(matches!(
        decode_record_pages(&v),
        Err(CodecError::LengthMismatch { .. })
    ));
}

/// A well-formed archive whose values are not a ledger (checksum recomputed, as a buggy
/// or hostile producer would) is refused by the domain checks, not folded.
#[test]
fn a_valid_archive_with_invalid_values_is_refused() {
    let mut wire = WirePage::from_page(&sample_pages()[0]);
    wire.account = "not valid!".into();
    let agg = encode_aggregate(&WireAggregate {
        pages: vec![wire.clone()],
    })
    .unwrap();
    assert!(matches!(
        decode_record_pages(&agg),
        Err(CodecError::Invalid {
            what: "account",
            ..
        })
    ));
    let mut wire = WirePage::from_page(&sample_pages()[0]);
    wire.first_version = 0;
    assert!(matches!(
        decode_page(&encode_page(&wire).unwrap()),
        Err(CodecError::Invalid { .. })
    ));
    let mut wire = WirePage::from_page(&sample_pages()[0]);
    wire.events[0].occurred_at = -1;
    assert!(matches!(
        decode_page(&encode_page(&wire).unwrap()),
        Err(CodecError::Invalid {
            what: "occurred_at",
            ..
        })
    ));
    let mut wire = WirePage::from_page(&sample_pages()[0]);
    wire.events[0].kind = tally::codec::WireKind::Deposited { amount: 0 };
    assert!(matches!(
        decode_page(&encode_page(&wire).unwrap()),
        Err(CodecError::Invalid { what: "amount", .. })
    ));
}

#[test]
fn records_decode_at_every_alignment() {
    let (bytes, pages) = aggregate_bytes();
    let mut buf = vec![0u8; bytes.len() + 32];
    let mut decoder = Decoder::new();
    for offset in 0..32 {
        buf[offset..offset + bytes.len()].copy_from_slice(&bytes);
        let slice = &buf[offset..offset + bytes.len()];
        let agg = decoder
            .aggregate(slice)
            .unwrap_or_else(|e| panic!("offset {offset}: {e}"));
        let back: Vec<Page> = agg.pages.iter().map(|p| p.to_page().unwrap()).collect();
        assert_eq!(back, pages, "offset {offset}");
        // In-place access refuses misaligned data instead of reading it unchecked.
        let in_place = tally::codec::access_aggregate(slice);
        let aligned = (slice.as_ptr() as usize + 16).is_multiple_of(16);
        assert_eq!(in_place.is_ok(), aligned, "offset {offset}");
    }
}

#[test]
fn bad_base64_in_a_kinesis_event_is_kept_as_an_error_for_that_record_only() {
    let (bytes, _) = aggregate_bytes();
    let good = base64_simd::STANDARD.encode_to_string(&bytes);
    let json = format!(
        r#"{{"Records":[{{"eventID":"shardId-000000000003:1","kinesis":{{"sequenceNumber":"1","partitionKey":"b0001","data":"{good}"}}}},{{"kinesis":{{"sequenceNumber":"2","data":"!!notbase64"}}}}]}}"#
    );
    let mut batch = RecordBatch::new();
    read_event(json.as_bytes(), &mut batch).unwrap();
    assert_eq!(batch.shard(0), "shardId-000000000003");
    assert_eq!(batch.data(0).unwrap(), &bytes[..]);
    assert!(matches!(batch.data(1), Err(CodecError::Base64(_))));
    assert_eq!((batch.shard(1), batch.sequence_number(1)), ("unknown", "2"));
}
