//! Fuzz target for the WAL reader: arbitrary bytes must never panic the frame scanner or the
//! record decoder, the scan must stop inside the input, and every record it accepts must
//! survive an encode/decode round trip unchanged.
//!
//! Run: `cd store-node/fuzz && cargo +nightly fuzz run wal_reader`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use store_node::wal::record::{decode_record, encode_record, frame_into, read_frame};

fuzz_target!(|data: &[u8]| {
    let scan = store_node::wal::scan(data);
    assert!(scan.valid_len <= data.len());
    assert_eq!(scan.stop.is_none(), scan.valid_len == data.len());
    for (lsn, rec) in &scan.records {
        let body = encode_record(rec);
        let mut buf = Vec::new();
        frame_into(&mut buf, *lsn, &[&body]);
        let (l, b, used) = read_frame(&buf).expect("re-framed record reads back");
        assert_eq!((l, used), (*lsn, buf.len()));
        assert_eq!(&decode_record(b).expect("re-encoded record decodes"), rec);
    }
});
