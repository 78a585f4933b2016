//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong writing a report or rendering it in a browser.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The data cannot be rendered as given (a table row of the wrong length, a bad file name…).
    #[error("invalid report data in run {run:?}: {what}")]
    Invalid {
        /// The run's name (empty for report-wide problems).
        run: String,
        /// What is wrong, naming the table, query or field.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Serialising JSON failed.
    #[error("{path}: {source}")]
    Json {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// Building or writing an Arrow table failed.
    #[error("{path}: {source}")]
    Arrow {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// Drawing a figure failed.
    #[error("figure {path}: {message}")]
    Figure {
        /// The SVG file being drawn.
        path: PathBuf,
        /// What the plotting library reported.
        message: String,
    },
    /// No Chromium binary was found.
    #[error(
        "no Chromium found: set CHROMIUM to its path or install chromium \
         (looked for chromium, chromium-browser and google-chrome in /usr/bin and on PATH)"
    )]
    BrowserNotFound,
    /// Chromium exited with an error.
    #[error("{binary} exited with {status}; stderr ends with:\n{stderr}")]
    BrowserFailed {
        /// The Chromium binary.
        binary: PathBuf,
        /// Its exit status.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// Chromium ran past the time limit and was killed.
    #[error("{binary} ran for more than {seconds} s and was killed; stderr ends with:\n{stderr}")]
    BrowserTimeout {
        /// The Chromium binary.
        binary: PathBuf,
        /// The limit.
        seconds: u64,
        /// The last lines of its standard error.
        stderr: String,
    },
}

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn invalid(run: &str, what: impl Into<String>) -> Self {
        Self::Invalid {
            run: run.to_string(),
            what: what.into(),
        }
    }
}
