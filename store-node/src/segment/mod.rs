//! Parquet segments: the Arrow schema of sealed events, encoding a run of a tenant's events
//! into a Parquet file image (zstd, row groups sized for scans) and decoding row groups back.
//! Files are written by the engine's checkpoint with [`crate::fsio::write_atomic`]-style
//! durability (write, fsync, rename, fsync directory). This module is pure encoding: it must
//! never touch the file system or decide what to flush. Row groups are bounded in rows and in
//! bytes of events, so that decoding one for a cold read costs at most about that many bytes,
//! and a cold read fetches only the footer and that row group's column chunks through a
//! [`ReadAt`] handed in (never the whole file image).
//!
//! Schema (one row per event, rows in position order):
//!
//! | column       | type                          | notes                             |
//! |--------------|-------------------------------|-----------------------------------|
//! | `tenant`     | Utf8                          |                                   |
//! | `stream`     | Utf8                          |                                   |
//! | `version`    | UInt64                        | version in the stream, from 0     |
//! | `position`   | UInt64                        | tenant position, from 0           |
//! | `event_id`   | FixedSizeBinary(16)           | UUID bytes                        |
//! | `event_type` | Utf8                          |                                   |
//! | `payload`    | Binary                        | opaque bytes                      |
//! | `metadata`   | Utf8                          | JSON object of string -> string   |
//! | `timestamp`  | Timestamp(Millisecond, "UTC") | commit time                       |

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt64Type};
use arrow_array::{
    ArrayRef, BinaryArray, FixedSizeBinaryArray, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fsio::ReadAt;
use crate::model::{RecordedEvent, StreamId, TenantId};

/// Errors of segment encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Arrow failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The file does not have our schema or holds invalid values.
    #[error("invalid segment: {0}")]
    Invalid(String),
}

/// What the manifest records about one segment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentMeta {
    /// File name inside the segment directory.
    pub file: String,
    /// Position of the first row.
    pub first_position: u64,
    /// Position of the last row.
    pub last_position: u64,
    /// Rows in the file.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// Position of the first row of each row group.
    pub row_groups: Vec<u64>,
}

impl SegmentMeta {
    /// Index of the row group that holds `position` (rows are in position order).
    pub fn row_group_of(&self, position: u64) -> Option<usize> {
        if position < self.first_position || position > self.last_position {
            return None;
        }
        Some(self.row_groups.partition_point(|p| *p <= position).max(1) - 1)
    }
}

/// The Arrow schema of a segment.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("event_id", DataType::FixedSizeBinary(16), false),
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

fn to_batch(events: &[Arc<RecordedEvent>]) -> Result<RecordBatch, SegmentError> {
    let meta_json: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into()))
        .collect();
    let cols: Vec<ArrayRef> = vec![
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
        Arc::new(FixedSizeBinaryArray::try_from_iter(
            events.iter().map(|e| *e.event_id.as_bytes()),
        )?),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.event_type.as_str()),
        )),
        Arc::new(BinaryArray::from_iter_values(
            events.iter().map(|e| e.payload.as_slice()),
        )),
        Arc::new(StringArray::from_iter_values(meta_json.iter())),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.timestamp_ms))
                .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

/// Encodes events (in position order) into a Parquet file image with row groups of at most
/// `row_group_rows` rows and about `row_group_bytes` bytes of events (at least one row).
/// Returns the bytes and the first position of every row group.
pub fn encode(
    events: &[Arc<RecordedEvent>],
    row_group_rows: usize,
    row_group_bytes: u64,
) -> Result<(Vec<u8>, Vec<u64>), SegmentError> {
    let mut w = SegmentWriter::new(row_group_rows, row_group_bytes)?;
    for e in events {
        w.push(e.clone())?;
    }
    w.finish()
}

/// Encodes events one at a time (in position order), holding at most one row group of them
/// besides the encoded file image: see [`encode`].
pub struct SegmentWriter {
    w: ArrowWriter<Vec<u8>>,
    rows: usize,
    max_bytes: u64,
    group: Vec<Arc<RecordedEvent>>,
    group_bytes: u64,
    firsts: Vec<u64>,
}

impl SegmentWriter {
    /// A writer of row groups of at most `row_group_rows` rows and about `row_group_bytes`.
    pub fn new(row_group_rows: usize, row_group_bytes: u64) -> Result<Self, SegmentError> {
        let rows = row_group_rows.max(1);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .set_max_row_group_row_count(Some(rows))
            .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
            .set_column_dictionary_enabled(ColumnPath::from("event_id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("version"), false)
            .set_column_dictionary_enabled(ColumnPath::from("position"), false)
            .build();
        Ok(Self {
            w: ArrowWriter::try_new(Vec::new(), schema(), Some(props))?,
            rows,
            max_bytes: row_group_bytes,
            group: Vec::new(),
            group_bytes: 0,
            firsts: Vec::new(),
        })
    }

    /// Adds the next event.
    pub fn push(&mut self, e: Arc<RecordedEvent>) -> Result<(), SegmentError> {
        let b = e.size_bytes();
        if !self.group.is_empty()
            && (self.group.len() >= self.rows || self.group_bytes + b > self.max_bytes)
        {
            self.flush()?;
        }
        self.group_bytes += b;
        self.group.push(e);
        Ok(())
    }

    /// Rows pushed so far.
    pub fn is_empty(&self) -> bool {
        self.firsts.is_empty() && self.group.is_empty()
    }

    fn flush(&mut self) -> Result<(), SegmentError> {
        let Some(first) = self.group.first() else {
            return Ok(());
        };
        self.firsts.push(first.position);
        self.w.write(&to_batch(&self.group)?)?;
        self.w.flush()?;
        self.group.clear();
        self.group_bytes = 0;
        Ok(())
    }

    /// The file image and the first position of every row group.
    pub fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>), SegmentError> {
        self.flush()?;
        Ok((self.w.into_inner()?, self.firsts))
    }
}

fn check_schema(got: &Schema) -> Result<(), SegmentError> {
    let want = schema();
    let same = got.fields().len() == want.fields().len()
        && got
            .fields()
            .iter()
            .zip(want.fields().iter())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if same {
        Ok(())
    } else {
        Err(SegmentError::Invalid(format!("unexpected schema {got:?}")))
    }
}

fn invalid(what: &str) -> SegmentError {
    SegmentError::Invalid(what.to_string())
}

fn from_batch(batch: &RecordBatch, out: &mut Vec<Arc<RecordedEvent>>) -> Result<(), SegmentError> {
    check_schema(&batch.schema())?;
    let c = |i: usize| batch.column(i);
    let tenant = c(0)
        .as_string_opt::<i32>()
        .ok_or_else(|| invalid("tenant"))?;
    let stream = c(1)
        .as_string_opt::<i32>()
        .ok_or_else(|| invalid("stream"))?;
    let version = c(2)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| invalid("version"))?;
    let position = c(3)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| invalid("position"))?;
    let ids = c(4)
        .as_fixed_size_binary_opt()
        .ok_or_else(|| invalid("event_id"))?;
    let types = c(5)
        .as_string_opt::<i32>()
        .ok_or_else(|| invalid("event_type"))?;
    let payload = c(6)
        .as_binary_opt::<i32>()
        .ok_or_else(|| invalid("payload"))?;
    let meta = c(7)
        .as_string_opt::<i32>()
        .ok_or_else(|| invalid("metadata"))?;
    let ts = c(8)
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| invalid("timestamp"))?;
    // Tenant and stream repeat across rows: reuse the last parsed value.
    let mut last_tenant: Option<TenantId> = None;
    let mut last_stream: Option<StreamId> = None;
    let stream_limits = crate::model::Limits {
        max_stream_id_len: u16::MAX as usize,
        ..Default::default()
    };
    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let t = match &last_tenant {
            Some(t) if t.as_str() == tenant.value(i) => t.clone(),
            _ => TenantId::new(tenant.value(i)).map_err(|_| invalid("tenant id"))?,
        };
        let s = match &last_stream {
            Some(s) if s.as_str() == stream.value(i) => s.clone(),
            _ => StreamId::with_limits(stream.value(i), &stream_limits)
                .map_err(|_| invalid("stream id"))?,
        };
        let id = Uuid::from_slice(ids.value(i)).map_err(|_| invalid("event id"))?;
        let metadata: BTreeMap<String, String> =
            serde_json::from_str(meta.value(i)).map_err(|_| invalid("metadata JSON"))?;
        out.push(Arc::new(RecordedEvent {
            tenant: t.clone(),
            stream: s.clone(),
            version: version.value(i),
            position: position.value(i),
            event_id: id,
            event_type: types.value(i).to_string(),
            payload: payload.value(i).to_vec(),
            metadata,
            timestamp_ms: ts.value(i),
        }));
        last_tenant = Some(t);
        last_stream = Some(s);
    }
    Ok(())
}

/// Decodes the given row groups (all when None) of a Parquet file image.
pub fn decode(
    file: Bytes,
    row_groups: Option<Vec<usize>>,
) -> Result<Vec<Arc<RecordedEvent>>, SegmentError> {
    decode_from(file, row_groups)
}

/// Decodes one row group of a segment file, reading only the footer and that row group.
pub fn decode_row_group(
    file: Arc<dyn ReadAt>,
    group: usize,
) -> Result<Vec<Arc<RecordedEvent>>, SegmentError> {
    decode_from(Chunks(file), Some(vec![group]))
}

fn decode_from<T: ChunkReader + 'static>(
    file: T,
    row_groups: Option<Vec<usize>>,
) -> Result<Vec<Arc<RecordedEvent>>, SegmentError> {
    let mut b = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(8192);
    check_schema(b.schema())?;
    if let Some(g) = row_groups {
        let n = b.metadata().num_row_groups();
        if g.iter().any(|i| *i >= n) {
            return Err(invalid("row group out of range"));
        }
        b = b.with_row_groups(g);
    }
    let mut out = Vec::new();
    for batch in b.build()? {
        from_batch(&batch?, &mut out)?;
    }
    Ok(out)
}

/// Parquet's view of a [`ReadAt`]: ranges are read when asked for.
struct Chunks(Arc<dyn ReadAt>);

/// A sequential reader from an offset of a [`ReadAt`] (Parquet reads page headers this way).
struct ChunkRead {
    file: Arc<dyn ReadAt>,
    pos: u64,
}

impl std::io::Read for ChunkRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Length for Chunks {
    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl ChunkReader for Chunks {
    type T = std::io::BufReader<ChunkRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::with_capacity(
            8192,
            ChunkRead {
                file: self.0.clone(),
                pos: start,
            },
        ))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut buf = vec![0; length];
        let n = self.0.read_at(start, &mut buf)?;
        if n < length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "{length} bytes at {start} asked, {n} there"
            )));
        }
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> Arc<RecordedEvent> {
        let mut metadata = BTreeMap::new();
        if i.is_multiple_of(2) {
            metadata.insert("trace".to_string(), format!("t-{i}"));
        }
        Arc::new(RecordedEvent {
            tenant: TenantId::new("acme").unwrap(),
            stream: StreamId::new(format!("s-{}", i % 3)).unwrap(),
            version: i / 3,
            position: 100 + i,
            event_id: Uuid::from_u128(i as u128 + 1),
            event_type: "Evt".into(),
            payload: vec![i as u8; (i % 40) as usize],
            metadata,
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
    }

    #[test]
    fn parquet_read_back_equals_written() {
        let events: Vec<_> = (0..1000).map(event).collect();
        let (bytes, groups) = encode(&events, 300, u64::MAX).unwrap();
        assert_eq!(groups, vec![100, 400, 700, 1000]);
        let back = decode(Bytes::from(bytes.clone()), None).unwrap();
        assert_eq!(back, events);
        let g2 = decode(Bytes::from(bytes), Some(vec![2])).unwrap();
        assert_eq!(g2, events[600..900].to_vec());
    }

    #[test]
    fn row_groups_are_bounded_in_bytes_and_read_alone() {
        use crate::fsio::{FileSystem, SimFs};
        let big = |i: u64| {
            let mut e = RecordedEvent::clone(&event(i));
            e.payload = vec![b'p'; 10_000];
            Arc::new(e)
        };
        let events: Vec<_> = (0..50).map(big).collect();
        let one = events[0].size_bytes();
        let (bytes, groups) = encode(&events, 8192, 4 * one).unwrap();
        assert_eq!(groups.len(), 13, "{groups:?}");
        assert_eq!(groups[1], 104);
        let fs = SimFs::new();
        let path = std::path::Path::new("/seg/x.parquet");
        fs.write_synced(path, &bytes).unwrap();
        let g = decode_row_group(fs.open_read(path).unwrap(), 12).unwrap();
        assert_eq!(g, events[48..].to_vec());
        // One event larger than the bound is a row group of its own.
        let (_, groups) = encode(&events[..3], 8192, 1).unwrap();
        assert_eq!(groups, vec![100, 101, 102]);
    }

    #[test]
    fn row_group_lookup() {
        let m = SegmentMeta {
            file: "x".into(),
            first_position: 100,
            last_position: 1099,
            rows: 1000,
            bytes: 1,
            row_groups: vec![100, 400, 700, 1000],
        };
        assert_eq!(m.row_group_of(99), None);
        assert_eq!(m.row_group_of(100), Some(0));
        assert_eq!(m.row_group_of(399), Some(0));
        assert_eq!(m.row_group_of(400), Some(1));
        assert_eq!(m.row_group_of(1099), Some(3));
        assert_eq!(m.row_group_of(1100), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(Bytes::from_static(b"PAR1 not really PAR1"), None).is_err());
    }
}
