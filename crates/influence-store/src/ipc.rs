//! Arrow IPC file writing (zstd) into hashing files, and panic-free reading of verified bytes.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_ipc::CompressionType;
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_schema::SchemaRef;

use crate::StoreError;
use crate::fsutil::{self, HashingFile};
use crate::manifest::FileEntry;

/// Write options: zstd at `level`. Fails (never falls back to uncompressed) if zstd is missing.
pub fn options(level: i32) -> Result<IpcWriteOptions, arrow_schema::ArrowError> {
    IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::ZSTD))?
        .try_with_compression_level(Some(level))
}

/// An Arrow IPC file being written to the temporary of its final path.
pub struct IpcFile {
    writer: FileWriter<HashingFile>,
    path: std::path::PathBuf,
}

impl IpcFile {
    /// Starts writing (to `path` + `.tmp`).
    pub fn create(path: &Path, schema: &SchemaRef, level: i32) -> Result<Self, StoreError> {
        let tmp = fsutil::tmp_path(path);
        let file = HashingFile::create(&tmp)?;
        let writer = FileWriter::try_new_with_options(
            file,
            schema,
            options(level).map_err(StoreError::arrow(path))?,
        )
        .map_err(StoreError::arrow(&tmp))?;
        Ok(Self {
            writer,
            path: path.to_owned(),
        })
    }

    /// Appends a record batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        self.writer
            .write(batch)
            .map_err(StoreError::arrow(fsutil::tmp_path(&self.path)))
    }

    /// Writes the footer, fsyncs, renames into place. Returns the manifest entry (`file` relative
    /// to `store`).
    pub fn publish(mut self, store: &Path, fsync: bool) -> Result<FileEntry, StoreError> {
        let tmp = fsutil::tmp_path(&self.path);
        self.writer.finish().map_err(StoreError::arrow(&tmp))?;
        let file = self.writer.into_inner().map_err(StoreError::arrow(&tmp))?;
        let (bytes, sha256) = file.finish(fsync)?;
        fsutil::publish(&self.path, fsync)?;
        let rel = self.path.strip_prefix(store).map_err(|_| {
            StoreError::Record(format!("{} is outside the store", self.path.display()))
        })?;
        Ok(FileEntry {
            file: rel.to_string_lossy().replace('\\', "/"),
            bytes,
            sha256,
        })
    }
}

/// Writes a whole Arrow IPC file atomically.
pub fn write_file(
    store: &Path,
    path: &Path,
    batch: &RecordBatch,
    level: i32,
    fsync: bool,
) -> Result<FileEntry, StoreError> {
    let mut f = IpcFile::create(path, &batch.schema(), level)?;
    f.write(batch)?;
    f.publish(store, fsync)
}

/// Reads the bytes of a store file and checks them against its manifest entry.
pub fn read_verified(store: &Path, entry: &FileEntry) -> Result<Vec<u8>, StoreError> {
    let path = store.join(&entry.file);
    let bytes = fsutil::read(&path)?;
    if bytes.len() as u64 != entry.bytes {
        return Err(StoreError::Size {
            path,
            expected: entry.bytes,
            found: bytes.len() as u64,
        });
    }
    let found = fsutil::sha256_hex(&bytes);
    if found != entry.sha256 {
        return Err(StoreError::Checksum {
            path,
            expected: entry.sha256.clone(),
            found,
        });
    }
    Ok(bytes)
}

/// Largest uncompressed size a file may declare (per buffer and in all). arrow-ipc allocates what
/// a file declares before reading it, and an allocation that fails aborts the process, so a
/// forged size must be refused first. Shards are cut at `shard_bytes` (256 MiB by default).
pub const MAX_DECODED_BYTES: u64 = 16 << 30;

/// Checks the framing arrow-ipc trusts before it allocates: footer, block extents, buffer
/// extents and the declared uncompressed sizes. Arrow validates the rest as it decodes.
fn preflight(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"ARROW1";
    let n = bytes.len();
    if n < 18 || !bytes.starts_with(MAGIC) {
        return Err("not an Arrow IPC file (no leading ARROW1 magic)".into());
    }
    let mut tail = [0u8; 10];
    tail.copy_from_slice(&bytes[n - 10..]);
    let footer_len = arrow_ipc::reader::read_footer_length(tail).map_err(|e| e.to_string())?;
    let footer_start = (n - 10)
        .checked_sub(footer_len)
        .filter(|&s| s >= 8)
        .ok_or_else(|| format!("footer length {footer_len} exceeds the file"))?;
    let footer = arrow_ipc::root_as_footer(&bytes[footer_start..n - 10])
        .map_err(|e| format!("footer: {e}"))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    let mut declared_total: u64 = 0;
    for (i, b) in blocks.enumerate() {
        let (offset, meta, body) = (b.offset(), i64::from(b.metaDataLength()), b.bodyLength());
        let bad = || format!("block {i}: offset {offset}, metadata {meta}, body {body} bytes");
        let (Ok(offset), Ok(meta), Ok(body)) = (
            usize::try_from(offset),
            usize::try_from(meta),
            usize::try_from(body),
        ) else {
            return Err(bad());
        };
        let end = offset
            .checked_add(meta)
            .and_then(|m| m.checked_add(body))
            .filter(|&e| e <= footer_start && meta >= 8)
            .ok_or_else(|| format!("{} lies outside the file", bad()))?;
        let meta_bytes = &bytes[offset..offset + meta];
        let message = if meta_bytes[..4] == [0xff; 4] {
            &meta_bytes[8..]
        } else {
            &meta_bytes[4..]
        };
        let message = arrow_ipc::root_as_message(message).map_err(|e| format!("block {i}: {e}"))?;
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        let Some(batch) = batch else { continue };
        let body_bytes = &bytes[offset + meta..end];
        for (j, buf) in batch.buffers().into_iter().flatten().enumerate() {
            let (o, l) = (buf.offset(), buf.length());
            let range = usize::try_from(o)
                .ok()
                .zip(usize::try_from(l).ok())
                .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                .filter(|r| r.end <= body_bytes.len())
                .ok_or_else(|| {
                    format!("block {i}, buffer {j}: offset {o}, length {l} outside its body")
                })?;
            if batch.compression().is_none() || range.len() < 8 {
                continue;
            }
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&body_bytes[range.start..range.start + 8]);
            let declared = i64::from_le_bytes(prefix);
            if declared > 0 {
                declared_total = declared_total.saturating_add(declared as u64);
                if declared_total > MAX_DECODED_BYTES {
                    return Err(format!(
                        "block {i}, buffer {j}: declares {declared} bytes uncompressed, beyond the \
                         reader's limit of {MAX_DECODED_BYTES} per file"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Decodes an Arrow IPC file held in memory (optionally only the columns `projection`).
///
/// The framing is checked first ([`preflight`]); Arrow validates what it decodes. Should its
/// decoder still panic on some malformed input, the panic is caught and reported as an error
/// naming `path`: no input takes the caller down.
pub fn decode(
    bytes: Vec<u8>,
    projection: Option<Vec<usize>>,
    path: &Path,
) -> Result<(SchemaRef, Vec<RecordBatch>), StoreError> {
    preflight(&bytes).map_err(|message| StoreError::Arrow {
        path: path.to_owned(),
        message: format!("malformed file: {message}"),
    })?;
    let run = || -> Result<(SchemaRef, Vec<RecordBatch>), arrow_schema::ArrowError> {
        let reader = FileReader::try_new(Cursor::new(bytes), projection)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Ok((schema, batches))
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(StoreError::arrow(path)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(StoreError::Arrow {
                path: path.to_owned(),
                message: format!("malformed file (decoder panicked: {msg})"),
            })
        }
    }
}
