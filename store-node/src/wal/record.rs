//! The WAL record codec: framing (length + CRC32C) and the binary layout of each record kind.
//!
//! Frame: `len: u32 LE | crc32c: u32 LE | lsn: u64 LE | body` where `len` counts `lsn + body`
//! and the CRC covers `lsn + body`. A record is the unit of atomicity: a whole append batch is
//! one record. Decoding never panics and never trusts a length it has not bounds-checked; it
//! must never do I/O.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::model::{NewEvent, Snapshot, StreamId, TenantId};

/// Bytes before the body: len + crc + lsn.
pub const FRAME_HEADER: usize = 16;
/// Largest accepted `len` field; anything bigger is treated as corruption.
pub use allsource_core::model::MAX_WAL_RECORD_BYTES as MAX_RECORD_BYTES;

const KIND_APPEND: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_TRIM: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_PURGE: u8 = 6;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the record does (a torn write).
    #[error("truncated record")]
    Truncated,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The length field is impossible.
    #[error("bad record length {0}")]
    BadLength(usize),
    /// The body does not parse.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// A decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalRecord {
    /// An atomic batch of events; versions and positions are consecutive from the first ones.
    Append {
        /// Tenant.
        tenant: TenantId,
        /// Stream.
        stream: StreamId,
        /// Version of the first event.
        first_version: u64,
        /// Tenant position of the first event.
        first_position: u64,
        /// Commit timestamp of the batch (ms since epoch).
        timestamp_ms: i64,
        /// The events.
        events: Vec<NewEvent>,
    },
    /// Soft delete of a stream.
    Delete {
        /// Tenant.
        tenant: TenantId,
        /// Stream.
        stream: StreamId,
    },
    /// Drop a stream's events with version < `before`.
    Truncate {
        /// Tenant.
        tenant: TenantId,
        /// Stream.
        stream: StreamId,
        /// First version kept.
        before: u64,
    },
    /// Drop a tenant's events with position < `before`.
    TrimTenant {
        /// Tenant.
        tenant: TenantId,
        /// First position kept.
        before: u64,
    },
    /// Latest snapshot of a stream.
    Snapshot {
        /// Tenant.
        tenant: TenantId,
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// Erase everything of a tenant (streams, events, snapshots, counters): replay of the
    /// records before it then leaves nothing behind.
    PurgeTenant {
        /// Tenant.
        tenant: TenantId,
    },
}

impl WalRecord {
    /// The tenant the record belongs to.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Self::Append { tenant, .. }
            | Self::Delete { tenant, .. }
            | Self::Truncate { tenant, .. }
            | Self::TrimTenant { tenant, .. }
            | Self::Snapshot { tenant, .. }
            | Self::PurgeTenant { tenant } => tenant,
        }
    }
}

/// Why a record could not be encoded: a field longer than its length prefix can say. Input
/// validation ([`crate::model::Limits`]) refuses such input first; this is the last line of
/// defence, so that a length can never wrap around and make a record that recovery cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} bytes (or entries); the WAL record format allows at most {max}")]
pub struct EncodeError {
    /// The field that does not fit.
    pub field: &'static str,
    /// Its length.
    pub len: usize,
    /// The most its length prefix can hold.
    pub max: usize,
}

fn len16(field: &'static str, len: usize) -> Result<[u8; 2], EncodeError> {
    u16::try_from(len)
        .map(u16::to_le_bytes)
        .map_err(|_| EncodeError {
            field,
            len,
            max: u16::MAX as usize,
        })
}

fn len32(field: &'static str, len: usize) -> Result<[u8; 4], EncodeError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| EncodeError {
            field,
            len,
            max: u32::MAX as usize,
        })
}

fn put_str16(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), EncodeError> {
    out.extend_from_slice(&len16(field, s.len())?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// An id whose type guarantees that it fits a u16 length ([`TenantId`]: 63 bytes at most,
/// [`StreamId`]: [`crate::model::MAX_STREAM_ID_BYTES`] at most).
fn put_id16(out: &mut Vec<u8>, id: &str) {
    debug_assert!(id.len() <= u16::MAX as usize);
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&id.as_bytes()[..len as usize]);
}

fn put_bytes32(out: &mut Vec<u8>, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    out.extend_from_slice(&len32(field, b.len())?);
    out.extend_from_slice(b);
    Ok(())
}

fn put_meta(out: &mut Vec<u8>, meta: &BTreeMap<String, String>) -> Result<(), EncodeError> {
    out.extend_from_slice(&len16("metadata entry count", meta.len())?);
    for (k, v) in meta {
        put_str16(out, "metadata key", k)?;
        put_bytes32(out, "metadata value", v.as_bytes())?;
    }
    Ok(())
}

/// Encodes the events of an append (the part that can be built outside any lock). Fails, and
/// writes nothing anywhere, when a field does not fit its length prefix.
pub fn encode_events(events: &[NewEvent]) -> Result<Vec<u8>, EncodeError> {
    let size: usize = events
        .iter()
        .map(|e| 32 + e.event_type.len() + e.payload.len() + e.metadata.len() * 16)
        .sum();
    let mut out = Vec::with_capacity(size + 4);
    out.extend_from_slice(&len32("event count", events.len())?);
    for e in events {
        out.extend_from_slice(e.event_id.as_bytes());
        put_str16(&mut out, "event type", &e.event_type)?;
        put_bytes32(&mut out, "payload", &e.payload)?;
        put_meta(&mut out, &e.metadata)?;
    }
    Ok(out)
}

/// Encodes the head of an append record; the body is [`encode_events`]' output. Cannot fail:
/// tenant and stream ids fit their length prefix by construction.
pub fn encode_append_head(
    tenant: &TenantId,
    stream: &StreamId,
    first_version: u64,
    first_position: u64,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + tenant.as_str().len() + stream.as_str().len());
    out.push(KIND_APPEND);
    put_id16(&mut out, tenant.as_str());
    put_id16(&mut out, stream.as_str());
    out.extend_from_slice(&first_version.to_le_bytes());
    out.extend_from_slice(&first_position.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out
}

/// Encodes a whole record body (head + events for appends).
pub fn encode_record(rec: &WalRecord) -> Result<Vec<u8>, EncodeError> {
    Ok(match rec {
        WalRecord::Append {
            tenant,
            stream,
            first_version,
            first_position,
            timestamp_ms,
            events,
        } => {
            let mut out = encode_append_head(
                tenant,
                stream,
                *first_version,
                *first_position,
                *timestamp_ms,
            );
            out.extend_from_slice(&encode_events(events)?);
            out
        }
        WalRecord::Delete { tenant, stream } => {
            let mut out = vec![KIND_DELETE];
            put_id16(&mut out, tenant.as_str());
            put_id16(&mut out, stream.as_str());
            out
        }
        WalRecord::Truncate {
            tenant,
            stream,
            before,
        } => {
            let mut out = vec![KIND_TRUNCATE];
            put_id16(&mut out, tenant.as_str());
            put_id16(&mut out, stream.as_str());
            out.extend_from_slice(&before.to_le_bytes());
            out
        }
        WalRecord::TrimTenant { tenant, before } => {
            let mut out = vec![KIND_TRIM];
            put_id16(&mut out, tenant.as_str());
            out.extend_from_slice(&before.to_le_bytes());
            out
        }
        WalRecord::Snapshot { tenant, snapshot } => {
            let mut out = vec![KIND_SNAPSHOT];
            put_id16(&mut out, tenant.as_str());
            put_id16(&mut out, snapshot.stream.as_str());
            out.extend_from_slice(&snapshot.version.to_le_bytes());
            out.extend_from_slice(&snapshot.timestamp_ms.to_le_bytes());
            put_bytes32(&mut out, "snapshot payload", &snapshot.payload)?;
            put_meta(&mut out, &snapshot.metadata)?;
            out
        }
        WalRecord::PurgeTenant { tenant } => {
            let mut out = vec![KIND_PURGE];
            put_id16(&mut out, tenant.as_str());
            out
        }
    })
}

/// Appends one frame made of `parts` (concatenated body) to `out`.
pub fn frame_into(out: &mut Vec<u8>, lsn: u64, parts: &[&[u8]]) {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let len = 8 + body_len;
    let lsn_bytes = lsn.to_le_bytes();
    let mut crc = crc32c::crc32c(&lsn_bytes);
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    out.reserve(FRAME_HEADER + body_len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn_bytes);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Reads one frame from the start of `buf`: returns (lsn, body, frame length).
pub fn read_frame(buf: &[u8]) -> Result<(u64, &[u8], usize), DecodeError> {
    if buf.len() < 8 {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_RECORD_BYTES).contains(&len) {
        return Err(DecodeError::BadLength(len));
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let end = 8 + len;
    if buf.len() < end {
        return Err(DecodeError::Truncated);
    }
    let data = &buf[8..end];
    if crc32c::crc32c(data) != crc {
        return Err(DecodeError::Checksum);
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&data[..8]);
    Ok((u64::from_le_bytes(lsn), &data[8..], end))
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed("field runs past the record end"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string16(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("invalid UTF-8"))
    }
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string32(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes32()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed("invalid UTF-8"))
    }
    fn tenant(&mut self) -> Result<TenantId, DecodeError> {
        TenantId::new(self.string16()?).map_err(|_| DecodeError::Malformed("invalid tenant id"))
    }
    fn stream(&mut self) -> Result<StreamId, DecodeError> {
        // The engine validated the id against its configured limits at append time; the
        // decoder only rejects ids no configuration could have produced.
        let s = self.string16()?;
        let limits = crate::model::Limits {
            max_stream_id_len: u16::MAX as usize,
            ..Default::default()
        };
        StreamId::with_limits(s, &limits).map_err(|_| DecodeError::Malformed("invalid stream id"))
    }
    fn meta(&mut self) -> Result<BTreeMap<String, String>, DecodeError> {
        let n = self.u16()? as usize;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.string16()?;
            let v = self.string32()?;
            m.insert(k, v);
        }
        Ok(m)
    }
    fn uuid(&mut self) -> Result<Uuid, DecodeError> {
        let b = self.take(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(Uuid::from_bytes(a))
    }
}

/// Decodes a record body.
pub fn decode_record(body: &[u8]) -> Result<WalRecord, DecodeError> {
    let mut c = Cursor { buf: body };
    let rec = match c.u8()? {
        KIND_APPEND => {
            let tenant = c.tenant()?;
            let stream = c.stream()?;
            let first_version = c.u64()?;
            let first_position = c.u64()?;
            let timestamp_ms = c.u64()? as i64;
            let n = c.u32()? as usize;
            if n == 0 || n > c.buf.len() / 24 {
                return Err(DecodeError::Malformed("bad event count"));
            }
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                let event_id = c.uuid()?;
                let event_type = c.string16()?;
                let payload = c.bytes32()?.to_vec();
                let metadata = c.meta()?;
                events.push(NewEvent {
                    event_id,
                    event_type,
                    payload,
                    metadata,
                });
            }
            WalRecord::Append {
                tenant,
                stream,
                first_version,
                first_position,
                timestamp_ms,
                events,
            }
        }
        KIND_DELETE => WalRecord::Delete {
            tenant: c.tenant()?,
            stream: c.stream()?,
        },
        KIND_TRUNCATE => WalRecord::Truncate {
            tenant: c.tenant()?,
            stream: c.stream()?,
            before: c.u64()?,
        },
        KIND_TRIM => WalRecord::TrimTenant {
            tenant: c.tenant()?,
            before: c.u64()?,
        },
        KIND_SNAPSHOT => {
            let tenant = c.tenant()?;
            let stream = c.stream()?;
            let version = c.u64()?;
            let timestamp_ms = c.u64()? as i64;
            let payload = c.bytes32()?.to_vec();
            let metadata = c.meta()?;
            WalRecord::Snapshot {
                tenant,
                snapshot: Snapshot {
                    stream,
                    version,
                    payload,
                    metadata,
                    timestamp_ms,
                },
            }
        }
        KIND_PURGE => WalRecord::PurgeTenant {
            tenant: c.tenant()?,
        },
        _ => return Err(DecodeError::Malformed("unknown record kind")),
    };
    if !c.buf.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(i: u128, payload: Vec<u8>) -> NewEvent {
        let mut metadata = BTreeMap::new();
        metadata.insert("k".to_string(), format!("v{i}"));
        NewEvent {
            event_id: Uuid::from_u128(i),
            event_type: "OrderPlaced".into(),
            payload,
            metadata,
        }
    }

    fn all_kinds() -> Vec<WalRecord> {
        let t = TenantId::new("acme").unwrap();
        let s = StreamId::new("order-1").unwrap();
        vec![
            WalRecord::Append {
                tenant: t.clone(),
                stream: s.clone(),
                first_version: 3,
                first_position: 77,
                timestamp_ms: 1_700_000_000_000,
                events: vec![ev(1, b"{}".to_vec()), ev(2, vec![0, 255, 7])],
            },
            WalRecord::Delete {
                tenant: t.clone(),
                stream: s.clone(),
            },
            WalRecord::Truncate {
                tenant: t.clone(),
                stream: s.clone(),
                before: 9,
            },
            WalRecord::TrimTenant {
                tenant: t.clone(),
                before: 1000,
            },
            WalRecord::Snapshot {
                tenant: t.clone(),
                snapshot: Snapshot {
                    stream: s,
                    version: 4,
                    payload: b"state".to_vec(),
                    metadata: BTreeMap::new(),
                    timestamp_ms: -5,
                },
            },
            WalRecord::PurgeTenant { tenant: t },
        ]
    }

    #[test]
    fn every_kind_round_trips_through_a_frame() {
        for rec in all_kinds() {
            let body = encode_record(&rec).unwrap();
            let mut buf = Vec::new();
            frame_into(&mut buf, 42, &[&body]);
            let (lsn, got, used) = read_frame(&buf).unwrap();
            assert_eq!((lsn, used), (42, buf.len()));
            assert_eq!(decode_record(got).unwrap(), rec);
        }
    }

    #[test]
    fn split_head_and_events_equals_whole_record() {
        let rec = &all_kinds()[0];
        let WalRecord::Append {
            tenant,
            stream,
            first_version,
            first_position,
            timestamp_ms,
            events,
        } = rec
        else {
            unreachable!()
        };
        let head = encode_append_head(
            tenant,
            stream,
            *first_version,
            *first_position,
            *timestamp_ms,
        );
        let evs = encode_events(events).unwrap();
        let mut a = Vec::new();
        frame_into(&mut a, 1, &[&head, &evs]);
        let mut b = Vec::new();
        frame_into(&mut b, 1, &[&encode_record(rec).unwrap()]);
        assert_eq!(a, b);
    }

    #[test]
    fn purge_record_layout_is_kind_then_tenant() {
        let rec = WalRecord::PurgeTenant {
            tenant: TenantId::new("acme").unwrap(),
        };
        assert_eq!(encode_record(&rec).unwrap(), b"\x06\x04\x00acme".to_vec());
        // A purge record with trailing bytes or a cut tenant id is corruption, not a purge.
        assert!(decode_record(b"\x06\x04\x00acmeX").is_err());
        assert!(decode_record(b"\x06\x04\x00acm").is_err());
        assert!(decode_record(b"\x06\x01\x00A").is_err());
    }

    #[test]
    fn torn_and_flipped_frames_are_rejected() {
        let body = encode_record(&all_kinds()[0]).unwrap();
        let mut buf = Vec::new();
        frame_into(&mut buf, 7, &[&body]);
        for cut in 0..buf.len() {
            assert!(read_frame(&buf[..cut]).is_err(), "prefix {cut} accepted");
        }
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert_eq!(read_frame(&bad).unwrap_err(), DecodeError::Checksum);
    }

    proptest! {
        #[test]
        fn append_records_round_trip(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            fv in any::<u64>(), fp in any::<u64>(), ts in any::<i64>(), lsn in any::<u64>(),
        ) {
            let events: Vec<NewEvent> = payloads.into_iter().enumerate().map(|(i, p)| ev(i as u128, p)).collect();
            let rec = WalRecord::Append {
                tenant: TenantId::new("t1").unwrap(),
                stream: StreamId::new("s").unwrap(),
                first_version: fv, first_position: fp, timestamp_ms: ts, events,
            };
            let mut buf = Vec::new();
            frame_into(&mut buf, lsn, &[&encode_record(&rec).unwrap()]);
            let (l, body, _) = read_frame(&buf).unwrap();
            prop_assert_eq!(l, lsn);
            prop_assert_eq!(decode_record(body).unwrap(), rec);
        }

        /// The WAL reader over arbitrary bytes, with the fuzz target's checks
        /// (`store-node/fuzz/fuzz_targets/wal_reader.rs`): no panic, the scan stops inside the
        /// input, and whatever it accepts round-trips. Inputs are random garbage and valid
        /// frames with random corruption.
        #[test]
        fn reader_checks_of_the_fuzz_target(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<usize>(), valid in any::<bool>(),
        ) {
            let data = if valid {
                let mut buf = Vec::new();
                for (i, rec) in all_kinds().iter().enumerate() {
                    frame_into(&mut buf, i as u64 + 1, &[&encode_record(rec).unwrap()]);
                }
                let i = flip % buf.len();
                buf[i] ^= data.first().copied().unwrap_or(1) | 1;
                buf
            } else {
                data
            };
            let scan = crate::wal::reader::scan(&data);
            prop_assert!(scan.valid_len <= data.len());
            prop_assert_eq!(scan.stop.is_none(), scan.valid_len == data.len());
            for (lsn, rec) in &scan.records {
                let mut buf = Vec::new();
                frame_into(&mut buf, *lsn, &[&encode_record(rec).unwrap()]);
                let (l, b, _) = read_frame(&buf).unwrap();
                prop_assert_eq!(l, *lsn);
                prop_assert_eq!(&decode_record(b).unwrap(), rec);
            }
            let _ = decode_record(&data);
        }
    }
}
