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

/// Decodes an Arrow IPC file held in memory (optionally only the columns `projection`).
///
/// Arrow validates what it decodes; should its decoder still panic on some malformed input, the
/// panic is caught and reported as an error naming `path`, so no input can take the caller down.
pub fn decode(
    bytes: Vec<u8>,
    projection: Option<Vec<usize>>,
    path: &Path,
) -> Result<(SchemaRef, Vec<RecordBatch>), StoreError> {
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
