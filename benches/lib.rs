//! Shared pieces of the benchmarks.

use influence_core::{RunInfo, Sink, SinkError, SketchBatch, WindowRecord};

/// A sink that keeps nothing (so a benchmark measures the hook, not memory growth) but counts.
#[derive(Debug, Default)]
pub struct CountingSink {
    /// Sketch rows received.
    pub rows: usize,
    /// Windows received.
    pub windows: usize,
}

impl Sink for CountingSink {
    fn begin(&mut self, _run: &RunInfo) -> Result<(), SinkError> {
        Ok(())
    }
    fn sketches(&mut self, batch: SketchBatch) -> Result<(), SinkError> {
        self.rows += batch.rows.len();
        Ok(())
    }
    fn window(&mut self, _record: WindowRecord) -> Result<(), SinkError> {
        self.windows += 1;
        Ok(())
    }
    fn checkpoint(&mut self, _window: u32, _bytes: Vec<u8>) -> Result<(), SinkError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
