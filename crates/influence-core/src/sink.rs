//! Where the hook's output goes.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::records::{RunInfo, SketchBatch, WindowRecord};

/// A sink failed; the message names what (file, field) and why.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The sink rejected a record as inconsistent with what it already holds.
    #[error("{0}")]
    Invalid(String),
    /// The sink was used after `finish`, or its background worker is gone.
    #[error("sink closed: {0}")]
    Closed(String),
    /// A sink's own typed error (downcast it to the sink's error type for details).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The destination of everything the hook captures.
///
/// Calls come in this order: `begin` once, then any number of `sketches`, with `window` (and its
/// `checkpoint`) whenever a window closes, then `finish` once. A sink that writes in the
/// background reports a failure on the next call at the latest.
pub trait Sink: Send {
    /// The run's layout: tracked layers, projection seed, loss reduction.
    fn begin(&mut self, run: &RunInfo) -> Result<(), SinkError>;
    /// The sketches of one training step.
    fn sketches(&mut self, batch: SketchBatch) -> Result<(), SinkError>;
    /// A closed window's factors.
    fn window(&mut self, record: WindowRecord) -> Result<(), SinkError>;
    /// The model checkpoint at the end of window `window`, as burnpack bytes
    /// (`Module::into_record().into_bytes()`).
    fn checkpoint(&mut self, window: u32, bytes: Vec<u8>) -> Result<(), SinkError>;
    /// No more records: flush everything.
    fn finish(&mut self) -> Result<(), SinkError>;
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn begin(&mut self, run: &RunInfo) -> Result<(), SinkError> {
        (**self).begin(run)
    }
    fn sketches(&mut self, batch: SketchBatch) -> Result<(), SinkError> {
        (**self).sketches(batch)
    }
    fn window(&mut self, record: WindowRecord) -> Result<(), SinkError> {
        (**self).window(record)
    }
    fn checkpoint(&mut self, window: u32, bytes: Vec<u8>) -> Result<(), SinkError> {
        (**self).checkpoint(window, bytes)
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        (**self).finish()
    }
}

/// What a [`MemorySink`] has received.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// The run info, once `begin` was called.
    pub run: Option<RunInfo>,
    /// Every sketch batch, in arrival order.
    pub batches: Vec<SketchBatch>,
    /// Every closed window.
    pub windows: Vec<WindowRecord>,
    /// `(window, burnpack bytes)` of every checkpoint.
    pub checkpoints: Vec<(u32, Vec<u8>)>,
    /// Whether `finish` was called.
    pub finished: bool,
}

impl MemoryStore {
    /// Total sketch rows received.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.rows.len()).sum()
    }
}

/// An in-memory [`Sink`] for tests and small runs. Clones share the same store, so a test can keep
/// one handle while the hook owns another.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    store: Arc<Mutex<MemoryStore>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks and returns the store. A poisoned lock (a panic elsewhere while holding it) still
    /// yields the data: it is only ever appended to.
    pub fn store(&self) -> MutexGuard<'_, MemoryStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for MemorySink {
    fn begin(&mut self, run: &RunInfo) -> Result<(), SinkError> {
        let mut s = self.store();
        if s.run.is_some() {
            return Err(SinkError::Invalid("begin called twice".into()));
        }
        s.run = Some(run.clone());
        Ok(())
    }

    fn sketches(&mut self, batch: SketchBatch) -> Result<(), SinkError> {
        let mut s = self.store();
        let Some(run) = s.run.as_ref() else {
            return Err(SinkError::Invalid("sketches before begin".into()));
        };
        if batch.sketches.len() != run.layers.len() {
            return Err(SinkError::Invalid(format!(
                "sketch batch of step {} has {} layers, run has {}",
                batch.step,
                batch.sketches.len(),
                run.layers.len()
            )));
        }
        for (layer, values) in run.layers.iter().zip(&batch.sketches) {
            if values.len() != batch.rows.len() * layer.sketch_len() {
                return Err(SinkError::Invalid(format!(
                    "layer {}: {} values for {} rows of {}",
                    layer.name,
                    values.len(),
                    batch.rows.len(),
                    layer.sketch_len()
                )));
            }
        }
        s.batches.push(batch);
        Ok(())
    }

    fn window(&mut self, record: WindowRecord) -> Result<(), SinkError> {
        self.store().windows.push(record);
        Ok(())
    }

    fn checkpoint(&mut self, window: u32, bytes: Vec<u8>) -> Result<(), SinkError> {
        self.store().checkpoints.push((window, bytes));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.store().finished = true;
        Ok(())
    }
}
