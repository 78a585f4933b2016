//! Crash-safe file primitives: hashing writers, write-temporary-then-rename, directory fsync.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::StoreError;

/// The suffix of files being written; never named by a manifest, removed on resume.
pub const TMP_SUFFIX: &str = ".tmp";

/// `path` with [`TMP_SUFFIX`] appended.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A buffered file writer that hashes and counts what passes through it.
pub struct HashingFile {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
    path: PathBuf,
}

impl HashingFile {
    /// Creates (truncating) `path`.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let file = File::create(path).map_err(StoreError::io(path))?;
        Ok(Self {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
            path: path.to_owned(),
        })
    }

    /// Flushes, optionally fsyncs, and returns `(bytes, sha256 hex)`.
    pub fn finish(self, fsync: bool) -> Result<(u64, String), StoreError> {
        let path = self.path;
        let file = self.inner.into_inner().map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        if fsync {
            file.sync_all().map_err(StoreError::io(&path))?;
        }
        Ok((self.bytes, hex(&self.hasher.finalize())))
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// fsyncs a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// Renames the finished temporary of `path` into place (and makes the rename durable).
pub fn publish(path: &Path, fsync: bool) -> Result<(), StoreError> {
    std::fs::rename(tmp_path(path), path).map_err(StoreError::io(path))?;
    if fsync && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: temporary, fsync, rename, directory fsync. Returns the
/// SHA-256 of the bytes.
pub fn write_atomic(path: &Path, bytes: &[u8], fsync: bool) -> Result<String, StoreError> {
    let tmp = tmp_path(path);
    let mut f = HashingFile::create(&tmp)?;
    f.write_all(bytes).map_err(StoreError::io(&tmp))?;
    let (_, sha) = f.finish(fsync)?;
    publish(path, fsync)?;
    Ok(sha)
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::Missing {
                path: path.to_owned(),
                what: "file named by the manifest".into(),
            }
        } else {
            StoreError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn atomic_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        let sha = write_atomic(&p, b"abc", true).expect("write");
        assert_eq!(sha, sha256_hex(b"abc"));
        assert_eq!(std::fs::read(&p).expect("read"), b"abc");
        assert!(!tmp_path(&p).exists());
    }
}
