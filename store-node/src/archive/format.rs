//! The Parquet encoding of archived events and the names of archive objects.
//!
//! Schema (one row per event, zstd-compressed, row groups of at most
//! [`ROW_GROUP_ROWS`] rows): `tenant` utf8, `stream` utf8, `version` uint64, `position` uint64,
//! `event_id` utf8 (hyphenated UUID), `event_type` utf8, `payload` binary, `metadata` utf8 (a JSON
//! object of string values), `timestamp` timestamp(ms, UTC). Object names are derived from
//! positions only, so a rerun over the same events writes the same keys. This module is pure: it
//! must never do I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt64Type};
use arrow_array::{
    ArrayRef, BinaryArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::manifest::ArchiveScope;
use super::{ArchiveError, ArchiveResult};
use crate::model::{RecordedEvent, StreamId, TenantId};

/// Most rows in one Parquet row group.
pub const ROW_GROUP_ROWS: usize = 65_536;

/// The Arrow schema of archived events.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
        Field::new("metadata", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn perr(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Parquet(e.to_string())
}

/// Encodes events (in position order) as one Parquet file.
pub fn encode(events: &[RecordedEvent]) -> ArchiveResult<Bytes> {
    let metadata = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata))
        .collect::<Result<Vec<_>, _>>()
        .map_err(perr)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.tenant.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.stream.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            events.iter().map(|e| e.version),
        )),
        Arc::new(UInt64Array::from_iter_values(
            events.iter().map(|e| e.position),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.event_id.hyphenated().to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.event_type.as_str()),
        )),
        Arc::new(BinaryArray::from_iter_values(
            events.iter().map(|e| e.payload.as_slice()),
        )),
        Arc::new(StringArray::from_iter_values(metadata.iter())),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.timestamp_ms))
                .with_timezone("UTC"),
        ),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(perr)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema(), Some(props)).map_err(perr)?;
    writer.write(&batch).map_err(perr)?;
    writer.close().map_err(perr)?;
    Ok(Bytes::from(buf))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> ArchiveResult<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| perr(format!("column {name} missing")))
}

fn wrong(name: &str) -> ArchiveError {
    perr(format!("column {name} has an unexpected type"))
}

/// Decodes a Parquet file written by [`encode`] back into events.
pub fn decode(data: Bytes) -> ArchiveResult<Vec<RecordedEvent>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(perr)?
        .build()
        .map_err(perr)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(perr)?;
        let s = |n: &str| -> ArchiveResult<_> {
            column(&batch, n)?
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong(n))
        };
        let u = |n: &str| -> ArchiveResult<_> {
            column(&batch, n)?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| wrong(n))
        };
        let (tenant, stream, event_id, event_type, metadata) = (
            s("tenant")?,
            s("stream")?,
            s("event_id")?,
            s("event_type")?,
            s("metadata")?,
        );
        let (version, position) = (u("version")?, u("position")?);
        let payload = column(&batch, "payload")?
            .as_binary_opt::<i32>()
            .ok_or_else(|| wrong("payload"))?;
        let timestamp = column(&batch, "timestamp")?
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| wrong("timestamp"))?;
        for i in 0..batch.num_rows() {
            let meta: BTreeMap<String, String> =
                serde_json::from_str(metadata.value(i)).map_err(perr)?;
            out.push(RecordedEvent {
                tenant: TenantId::new(tenant.value(i)).map_err(perr)?,
                stream: StreamId::new(stream.value(i)).map_err(perr)?,
                version: version.value(i),
                position: position.value(i),
                event_id: uuid::Uuid::parse_str(event_id.value(i)).map_err(perr)?,
                event_type: event_type.value(i).to_string(),
                payload: payload.value(i).to_vec(),
                metadata: meta,
                timestamp_ms: timestamp.value(i),
            });
        }
    }
    Ok(out)
}

/// UTC calendar date (`YYYY-MM-DD`) of a millisecond timestamp.
pub fn utc_date(timestamp_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(timestamp_ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".to_string())
}

/// Key (relative) of a data file:
/// `tenant=<t>/store=<uid>/incarnation=<n>/date=<d>/part-<first>-<last>.parquet`, positions
/// zero-padded to 20 digits so keys sort in position order.
pub fn part_key(scope: &ArchiveScope, date: &str, first: u64, last: u64) -> String {
    format!(
        "{}date={date}/part-{first:020}-{last:020}.parquet",
        scope.dir()
    )
}

/// How large one archive file may grow. Files never span UTC dates, nor exceed `max_rows` rows
/// or `max_bytes` bytes of events ([`RecordedEvent::size_bytes`]; an event larger than
/// `max_bytes` gets a file of its own). The bytes bound is what keeps the archiver's memory
/// bounded: a file is buffered whole before it is encoded and uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBounds {
    /// Most rows per file.
    pub max_rows: usize,
    /// Most bytes of events per file.
    pub max_bytes: u64,
}

impl Default for FileBounds {
    fn default() -> Self {
        Self {
            max_rows: 50_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl FileBounds {
    /// True when `next` must start a new file after a non-empty file that began at `first_ts`
    /// and holds `len` rows of `bytes` bytes.
    pub fn starts_new_file(
        &self,
        first_ts: i64,
        len: usize,
        bytes: u64,
        next: &RecordedEvent,
    ) -> bool {
        len >= self.max_rows.max(1)
            || bytes.saturating_add(next.size_bytes()) > self.max_bytes.max(1)
            || utc_date(first_ts) != utc_date(next.timestamp_ms)
    }

    /// Splits events (in position order) into files. Returns index ranges into `events`.
    pub fn split(&self, events: &[RecordedEvent]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0u64);
        for i in 0..events.len() {
            if i > start
                && self.starts_new_file(events[start].timestamp_ms, i - start, bytes, &events[i])
            {
                out.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += events[i].size_bytes();
        }
        if start < events.len() {
            out.push(start..events.len());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ev(pos: u64, ts: i64) -> RecordedEvent {
        let mut metadata = BTreeMap::new();
        metadata.insert("source".to_string(), format!("test-{pos}"));
        RecordedEvent {
            tenant: TenantId::new("acme").unwrap(),
            stream: StreamId::new(format!("order-{}", pos % 3)).unwrap(),
            version: pos / 3,
            position: pos,
            event_id: uuid::Uuid::from_u128(u128::from(pos) + 1),
            event_type: "OrderPlaced".into(),
            payload: format!("{{\"n\":{pos}}}").into_bytes(),
            metadata,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn round_trip() {
        let events: Vec<_> = (0..1000)
            .map(|p| ev(p, 1_700_000_000_000 + p as i64))
            .collect();
        let data = encode(&events).unwrap();
        assert_eq!(&data[..4], b"PAR1");
        assert_eq!(decode(data).unwrap(), events);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(Bytes::from_static(b"not parquet")).is_err());
    }

    #[test]
    fn names_and_splits() {
        let t = TenantId::new("acme").unwrap();
        let scope = ArchiveScope::new(t, "uid-1", 0).unwrap();
        assert_eq!(
            part_key(&scope, "2026-11-24", 5, 17),
            "tenant=acme/store=uid-1/incarnation=0/date=2026-11-24/\
             part-00000000000000000005-00000000000000000017.parquet"
        );
        assert_eq!(utc_date(0), "1970-01-01");
        let day = 86_400_000;
        let events: Vec<_> = (0..7)
            .map(|p| ev(p, if p < 4 { 10 } else { day + 10 }))
            .collect();
        let rows = |max_rows| FileBounds {
            max_rows,
            ..FileBounds::default()
        };
        assert_eq!(rows(3).split(&events), vec![0..3, 3..4, 4..7]);
        assert_eq!(rows(100).split(&events), vec![0..4, 4..7]);
        assert!(rows(3).split(&[]).is_empty());
        // Bytes bound a file too; an event above the bound gets a file of its own.
        let size = events[0].size_bytes();
        let bytes = |max_bytes| FileBounds {
            max_rows: 100,
            max_bytes,
        };
        assert_eq!(bytes(2 * size).split(&events), vec![0..2, 2..4, 4..6, 6..7]);
        assert_eq!(bytes(1).split(&events).len(), 7);
    }
}
