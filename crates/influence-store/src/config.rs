//! What a user sets: value type of the sketches, shard sizes, queue depth, overflow policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The value type sketches are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SketchDtype {
    /// IEEE single precision (4 bytes a value): exact copies of what the hook computed.
    F32,
    /// IEEE half precision (2 bytes, 11-bit significand, max 65504), as in Bergson. Values
    /// beyond the range become ±inf and are counted in the manifest (`overflowed_values`).
    F16,
    /// bfloat16 (2 bytes, 8-bit significand, f32's range). Arrow has no bfloat16 type: stored as
    /// `uint16` bit patterns with field metadata `burn_influence.dtype = bf16`.
    Bf16,
    /// Signed 8-bit integers with one f32 scale per row and layer (absmax quantisation:
    /// `q = round(127 · v / max|v|)`, stored value `q · max|v| / 127`), 1 byte a value plus 4 a
    /// row: twice the coordinates of f16 at the same bytes, with the same agreement with exact
    /// influence (docs/accuracy.md (v)) — the default. A row holding a non-finite value decodes
    /// as NaN throughout (counted in `overflowed_values`). Store version 3.
    #[default]
    I8,
}

impl SketchDtype {
    /// Every value type, in declaration order.
    pub const ALL: [Self; 4] = [Self::F32, Self::F16, Self::Bf16, Self::I8];

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::I8 => 1,
        }
    }

    /// Bytes stored per row and layer besides the values (the scale of [`SketchDtype::I8`]).
    pub fn row_overhead(self) -> usize {
        match self {
            Self::I8 => 4,
            _ => 0,
        }
    }

    /// Bytes of one row of `k` values of one layer before compression.
    pub fn row_bytes(self, k: usize) -> usize {
        k * self.bytes() + self.row_overhead()
    }

    /// The oldest store version that can hold sketches of this type: the writer records it, so
    /// that a store is readable by every reader that knows its contents.
    pub fn min_store_version(self) -> u32 {
        match self {
            Self::I8 => 3,
            _ => 2,
        }
    }

    /// The name used in the manifest and the field metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::I8 => "i8",
        }
    }
}

/// What the writer does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The training step waits until the writer catches up (nothing is lost). Waiting time is
    /// measured and reported as stall time.
    #[default]
    Block,
    /// The step's sketch rows are dropped instead of waiting; every dropped row is counted, its
    /// step recorded in the manifest (`dropped`), and a warning logged. Windows and checkpoints
    /// are never dropped.
    DropRows,
}

/// Store settings (serde: every field optional, unknown fields rejected).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Value type of the sketch columns.
    pub dtype: SketchDtype,
    /// zstd level (1–22; higher is smaller and slower). Sketches are near-random floats, so high
    /// levels buy little.
    pub zstd_level: i32,
    /// An Arrow record batch is written once it holds this many rows…
    pub batch_rows: usize,
    /// …or this many bytes of uncompressed sketch values, whichever comes first (a training
    /// step's rows are never split across batches). A batch is encoded, written and later decoded
    /// whole: wide layers or full-rank rows (megabytes each) would otherwise make batches of
    /// gigabytes.
    pub batch_bytes: usize,
    /// A shard is committed once it holds this many rows…
    pub shard_rows: usize,
    /// …or this many bytes of uncompressed sketch values, whichever comes first. Shards are also
    /// committed when a window closes, so a shard never spans two windows.
    pub shard_bytes: usize,
    /// Capacity of the queue between the training step and the writer thread, in messages (one
    /// message is one training step's sketches).
    pub queue_steps: usize,
    /// What to do when the queue is full.
    pub overflow: Overflow,
    /// How long `finish` (or dropping the writer) waits for the writer thread, in seconds.
    pub finish_timeout_secs: f64,
    /// fsync files and directories before a shard or manifest becomes visible. Turn off only
    /// for throwaway stores (tests, benchmarks of the encoder).
    pub fsync: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            dtype: SketchDtype::I8,
            zstd_level: 1,
            batch_rows: 1024,
            batch_bytes: 64 << 20,
            shard_rows: 65_536,
            shard_bytes: 256 << 20,
            queue_steps: 64,
            overflow: Overflow::Block,
            finish_timeout_secs: 300.0,
            fsync: true,
        }
    }
}

impl StoreConfig {
    /// Sets [`StoreConfig::dtype`].
    pub fn dtype(mut self, dtype: SketchDtype) -> Self {
        self.dtype = dtype;
        self
    }
    /// Sets [`StoreConfig::zstd_level`].
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }
    /// Sets [`StoreConfig::batch_rows`].
    pub fn batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows;
        self
    }
    /// Sets [`StoreConfig::batch_bytes`].
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }
    /// Sets [`StoreConfig::shard_rows`].
    pub fn shard_rows(mut self, rows: usize) -> Self {
        self.shard_rows = rows;
        self
    }
    /// Sets [`StoreConfig::shard_bytes`].
    pub fn shard_bytes(mut self, bytes: usize) -> Self {
        self.shard_bytes = bytes;
        self
    }
    /// Sets [`StoreConfig::queue_steps`].
    pub fn queue_steps(mut self, steps: usize) -> Self {
        self.queue_steps = steps;
        self
    }
    /// Sets [`StoreConfig::overflow`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }
    /// Sets [`StoreConfig::finish_timeout_secs`].
    pub fn finish_timeout_secs(mut self, secs: f64) -> Self {
        self.finish_timeout_secs = secs;
        self
    }
    /// Sets [`StoreConfig::fsync`].
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// The finish timeout as a duration.
    pub fn finish_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.finish_timeout_secs)
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), StoreError> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err(StoreError::Config {
                    field,
                    message: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("batch_rows", self.batch_rows)?;
        positive("batch_bytes", self.batch_bytes)?;
        positive("shard_rows", self.shard_rows)?;
        positive("shard_bytes", self.shard_bytes)?;
        positive("queue_steps", self.queue_steps)?;
        if !(1..=22).contains(&self.zstd_level) {
            return Err(StoreError::Config {
                field: "zstd_level",
                message: format!("{} is outside 1..=22", self.zstd_level),
            });
        }
        if !(self.finish_timeout_secs.is_finite() && self.finish_timeout_secs > 0.0) {
            return Err(StoreError::Config {
                field: "finish_timeout_secs",
                message: format!("{} is not a positive number", self.finish_timeout_secs),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_json() {
        let c = StoreConfig::default();
        c.validate().expect("defaults are valid");
        let json = serde_json::to_string(&c).expect("serialise");
        let back: StoreConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, c);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = StoreConfig::default()
            .queue_steps(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("queue_steps"), "{e}");
        let e = StoreConfig::default()
            .zstd_level(30)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("zstd_level"), "{e}");
        let e = serde_json::from_str::<StoreConfig>(r#"{"dtyp": "f32"}"#).unwrap_err();
        assert!(e.to_string().contains("dtyp"), "{e}");
        let c: StoreConfig = serde_json::from_str(r#"{"dtype": "bf16"}"#).expect("parse");
        assert_eq!(c.dtype, SketchDtype::Bf16);
    }
}
