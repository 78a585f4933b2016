//! Typed errors of the store: every one names the file and, where it applies, the field.

use std::path::PathBuf;

/// What went wrong reading or writing a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error (its message names the line and column).
        source: serde_json::Error,
    },
    /// An Arrow IPC file could not be encoded or decoded.
    #[error("{path}: Arrow IPC: {message}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// What Arrow reported.
        message: String,
    },
    /// The store was written by an incompatible version.
    #[error("{path}: {field} is {found}, this reader supports {oldest} to {expected}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version field.
        field: &'static str,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads (and writes).
        expected: u32,
        /// The oldest version this build reads.
        oldest: u32,
    },
    /// A file's content does not match the checksum the manifest records.
    #[error("{path}: checksum mismatch: manifest says sha256 {expected}, file has {found}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in the manifest.
        expected: String,
        /// The checksum of the bytes on disk.
        found: String,
    },
    /// A file's size does not match the manifest (typically a truncated file).
    #[error("{path}: size mismatch: manifest says {expected} bytes, file has {found}")]
    Size {
        /// The file.
        path: PathBuf,
        /// The size in the manifest.
        expected: u64,
        /// The size on disk.
        found: u64,
    },
    /// A file the manifest names does not exist.
    #[error("{path}: missing ({what})")]
    Missing {
        /// The file that should exist.
        path: PathBuf,
        /// What it was supposed to hold.
        what: String,
    },
    /// A field of a file holds a value that is not allowed or contradicts another.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field (a JSON path in a manifest, a column in a shard).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A record handed to the writer does not fit the run (wrong layer count, sizes, order).
    #[error("record rejected: {0}")]
    Record(String),
    /// A setting of the store configuration is out of range.
    #[error("store config: `{field}`: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An argument of a read call names something the store does not hold.
    #[error("argument `{name}`: {message}")]
    Argument {
        /// The argument.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A store already exists where a new one was to be created.
    #[error("{path}: a store already exists here (resume it, or choose another directory)")]
    Exists {
        /// The store directory.
        path: PathBuf,
    },
    /// The writer thread stopped (after an earlier error, or after `finish`).
    #[error("store writer closed: {0}")]
    Closed(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn invalid(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn arrow(path: impl Into<PathBuf>) -> impl FnOnce(arrow_schema::ArrowError) -> Self {
        let path = path.into();
        move |e| Self::Arrow {
            path,
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for influence_core::SinkError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed(m) => Self::Closed(m),
            other => Self::Backend(Box::new(other)),
        }
    }
}
