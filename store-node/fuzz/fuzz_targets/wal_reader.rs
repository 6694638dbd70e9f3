//! Fuzz target for the WAL reader: arbitrary bytes must never panic the frame scanner or the
//! record decoder, the scan must stop inside the input, and every record it accepts must
//! survive an encode/decode round trip unchanged.
//!
//! Random bytes almost never carry a valid CRC32C, so half of the inputs are first cut into
//! bodies that are framed with a correct length and checksum (the fuzzer then explores the record
//! decoder itself), and the rest are scanned raw (torn and corrupt frames).
//!
//! Run: `cd store-node/fuzz && cargo +nightly fuzz run wal_reader` (or `make fuzz`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use store_node::wal::record::{decode_record, encode_record, frame_into, read_frame};

/// Frames `data` as a sequence of bodies: each starts with a two-byte little-endian length.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut lsn = 1;
    while rest.len() >= 2 {
        let (len, tail) = rest.split_at(2);
        let n = (u16::from_le_bytes([len[0], len[1]]) as usize).min(tail.len());
        frame_into(&mut out, lsn, &[&tail[..n]]);
        rest = &tail[n..];
        lsn += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let log = if mode & 1 == 1 { framed(rest) } else { rest.to_vec() };
    let scan = store_node::wal::scan(&log);
    assert!(scan.valid_len <= log.len());
    assert_eq!(scan.stop.is_none(), scan.valid_len == log.len());
    for (lsn, rec) in &scan.records {
        let body = encode_record(rec).expect("a decoded record re-encodes");
        let mut buf = Vec::new();
        frame_into(&mut buf, *lsn, &[&body]);
        let (l, b, used) = read_frame(&buf).expect("re-framed record reads back");
        assert_eq!((l, used), (*lsn, buf.len()));
        assert_eq!(&decode_record(b).expect("re-encoded record decodes"), rec);
    }
});
