//! The analyzer's error type.

use std::path::PathBuf;

/// An error of the user's [`crate::Task`] (model loading, tokenisation, corpus access).
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the analyzer; each names the file, query, layer or argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    /// Reading the store failed (typed: downcast nothing, match on it).
    #[error(transparent)]
    Store(#[from] influence_store::StoreError),
    /// Capturing gradients failed.
    #[error("gradients: {0}")]
    Hook(#[from] influence_hook::HookError),
    /// The factor math failed.
    #[error("preconditioning: {0}")]
    Ekfac(#[from] influence_ekfac::EkfacError),
    /// The factor math of one window and layer failed (a non-finite or non-positive damping
    /// from bad factors, say).
    #[error("{what}: preconditioning: {source}")]
    Preconditioner {
        /// The window and layer.
        what: String,
        /// The factor math's error.
        source: influence_ekfac::EkfacError,
    },
    /// The user's task failed.
    #[error("task ({what}): {source}")]
    Task {
        /// What the task was asked to do.
        what: String,
        /// The task's error.
        source: TaskError,
    },
    /// A query file is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Query {
        /// The queries file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The model does not match the store.
    #[error("model does not match the store: {0}")]
    Mismatch(String),
    /// An invalid argument or option.
    #[error("argument {name}: {message}")]
    Argument {
        /// The argument or option.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// File I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing an output table failed.
    #[error("{}: {message}", path.display())]
    Output {
        /// The output file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// An external score matrix is malformed ([`crate::ExternalScores::read`]) or lacks a
    /// query's column.
    #[error("{}: {location}: {message}", path.display())]
    Scores {
        /// The score file.
        path: PathBuf,
        /// Where: the column and row, the header, or the metadata key.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A NaN or ∞ where a finite number is needed (a query gradient, a preconditioned query);
    /// names the window, layer and query.
    #[error("non-finite values: {0}")]
    NonFinite(String),
    /// A device computation failed.
    #[error("device: {0}")]
    Device(String),
}

impl AnalyzerError {
    pub(crate) fn task(what: impl Into<String>) -> impl FnOnce(TaskError) -> Self {
        let what = what.into();
        move |source| Self::Task { what, source }
    }

    pub(crate) fn argument(name: &str, message: impl Into<String>) -> Self {
        Self::Argument {
            name: name.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
