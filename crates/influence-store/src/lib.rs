//! The on-disk store of burn-influence.
//!
//! The hook's sketches go to a [`StoreWriter`] (a [`influence_core::Sink`]): the training step only
//! enqueues a step's rows on a bounded channel; one background thread encodes them as Arrow record
//! batches, compresses them with zstd into Arrow IPC *shards*, and commits each shard atomically
//! (temporary file, fsync, rename, then the manifest, itself replaced atomically). Windows add a
//! factor file (Arrow, one row per layer) and a burnpack checkpoint. A [`Store`] opens it again,
//! checks the manifest, sizes and SHA-256 checksums, and streams [`SketchChunk`]s. The layout is
//! in `docs/format.md`; pyarrow, polars and duckdb read every file as it is.
//!
//! ```
//! use influence_core::{
//!     LayerSpec, LossReduction, ProjectionKind, RunInfo, Sink, SketchBatch, SketchRowMeta,
//!     FORMAT_VERSION, FisherLabels,
//! };
//! use influence_store::{ReadOptions, Store, StoreConfig, StoreWriter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let run = RunInfo {
//!     format_version: FORMAT_VERSION,
//!     layers: vec![LayerSpec { name: "fc".into(), d_in: 8, d_out: 4, bias: true, k_a: 2, k_g: 2 }],
//!     projection_seed: 7,
//!     projection: ProjectionKind::Rademacher,
//!     loss_reduction: LossReduction::Sum,
//!     window_steps: 10,
//!     fisher: FisherLabels::Empirical,
//!     sketch_scheme: Default::default(),
//! };
//! let mut writer = StoreWriter::create(dir.path(), StoreConfig::default())?;
//! writer.begin(&run)?;
//! writer.sketches(SketchBatch {
//!     step: 0,
//!     window: 0,
//!     learning_rate: 1e-3,
//!     rows: vec![SketchRowMeta { doc_id: 42, loss: Some(2.5), tokens: 12, source: "wiki".into() }],
//!     sketches: vec![vec![0.5, -1.0, 0.25, 2.0]],
//!     skipped: Vec::new(),
//! })?;
//! writer.finish()?;
//!
//! let store = Store::open(dir.path())?;
//! let chunk = store.sketches(&ReadOptions::default())?.next().expect("one chunk")?;
//! assert_eq!(chunk.doc_ids, [42]);
//! // i8, the default: one scale per row and layer (max |v| / 127), each value within half a step.
//! let step = 2.0 / 127.0;
//! for (got, sent) in chunk.sketches[0].iter().zip([0.5, -1.0, 0.25, 2.0]) {
//!     assert!((got - sent).abs() <= step / 2.0 + 1e-6, "{got} vs {sent}");
//! }
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
pub mod factors;
pub mod fsutil;
mod ipc;
pub mod manifest;
mod reader;
pub mod schema;
mod writer;

pub use config::{Overflow, SketchDtype, StoreConfig};
pub use error::StoreError;
pub use manifest::{
    DroppedStep, FileEntry, MANIFEST, MIN_STORE_VERSION, Manifest, ResumeEntry, STORE_VERSION,
    ShardEntry, WindowEntry,
};
pub use reader::{ReadOptions, SketchStream, Store, VerifyReport, decode_shard};
pub use schema::SketchChunk;
pub use writer::{
    CHECKPOINTS, FACTORS, ResumePoint, SHARDS, StatsHandle, StoreWriter, WriterStats,
};
