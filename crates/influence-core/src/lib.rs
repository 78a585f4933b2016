//! The shared data model of burn-influence.
//!
//! This crate is what the hook (training time), the store and the analyzer agree on. It knows
//! nothing of burn or Arrow: tensors cross it as plain row-major `Vec<f32>`/`Vec<f64>`.
//!
//! * [`LayerSpec`], [`RunInfo`]: what is tracked and how it is sketched.
//! * [`Projection`]: the seeded random projections `P_a`, `P_g`, reproducible from
//!   [`RunInfo::projection_seed`] alone.
//! * [`SketchBatch`]: per-document gradient sketches `K_n = P_g G_n P_aᵀ` of one training step.
//! * [`WindowRecord`]: the EK-FAC factors, eigenbases and corrected eigenvalues of one window.
//! * [`Sink`]: where the hook sends all of it; [`MemorySink`] keeps it in memory.
//!
//! ```
//! use influence_core::{Projection, ProjectionKind, Side};
//! // P_a for a layer with 8 inputs (+1 bias column) sketched to 4 dimensions.
//! let p = Projection::generate(ProjectionKind::Rademacher, 42, "blocks.0.mlp.fc1", Side::Input, 9, 4)
//!     .expect("valid sizes");
//! assert_eq!(p.values.len(), 9 * 4);
//! // Same seed and layer: the very same matrix.
//! let q = Projection::generate(ProjectionKind::Rademacher, 42, "blocks.0.mlp.fc1", Side::Input, 9, 4)
//!     .expect("valid sizes");
//! assert_eq!(p, q);
//! ```

mod projection;
mod records;
mod sink;

pub use projection::{Projection, ProjectionKind, Side};
pub use records::{
    CoordinateSelection, Eigenbasis, FisherLabels, LayerFactors, LayerSpec, LossReduction, RunInfo,
    SketchBasis, SketchBatch, SketchRowMeta, SketchScheme, SkippedRow, WindowRecord,
};
pub use sink::{MemorySink, MemoryStore, Sink, SinkError};

/// The version of the data model; bumped on any change to what a record means. Version 2 added
/// [`SketchScheme`] and [`SketchBasis`]; records of version 1 read as [`SketchScheme::Random`].
pub const FORMAT_VERSION: u32 = 2;

/// The oldest data-model version readers still accept.
pub const MIN_FORMAT_VERSION: u32 = 1;
