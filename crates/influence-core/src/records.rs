//! Records that cross from the hook to a sink (and later from a store to the analyzer).

use serde::{Deserialize, Serialize};

use crate::projection::{Projection, ProjectionKind, Side};

/// How the training loss was reduced over tokens; the hook rescales the captured output
/// gradients by the inverse so that sketches and factors are those of the per-document *sum* loss
/// `−log p(document)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossReduction {
    /// `L = Σ_t ℓ_t` over all loss-bearing tokens of the batch.
    Sum,
    /// `L = (1/N) Σ_t ℓ_t`, N = loss-bearing tokens of the batch (burn's `CrossEntropyLoss` default).
    #[default]
    MeanOverTokens,
    /// `L = (1/B) Σ_n Σ_{t∈n} ℓ_t`, B = sequences in the batch.
    MeanOverSequences,
}

/// Which labels define the Fisher used for the EK-FAC fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FisherLabels {
    /// The training labels (the empirical Fisher): free, it is the training step's own gradient.
    #[default]
    Empirical,
    /// Labels sampled from the model's own softmax (the true Fisher, kronfluence's default); the
    /// window-close fit pass then also re-estimates `S` from sampled-label gradients.
    Sampled,
}

/// One tracked Linear layer and how it is sketched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The layer's path in the model, e.g. `blocks.0.attn.qkv`.
    pub name: String,
    /// Input features (without the bias column).
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Whether the layer has a bias; the input then gets a constant 1 appended.
    pub bias: bool,
    /// Sketch size on the input side (`P_a` is `d_in_aug × k_a`).
    pub k_a: usize,
    /// Sketch size on the output side (`P_g` is `d_out × k_g`).
    pub k_g: usize,
}

impl LayerSpec {
    /// Input dimension including the appended bias 1.
    pub fn d_in_aug(&self) -> usize {
        self.d_in + usize::from(self.bias)
    }

    /// Number of values in one sketch (`k_g × k_a`).
    pub fn sketch_len(&self) -> usize {
        self.k_g * self.k_a
    }
}

/// Everything needed to interpret the sketches of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// [`crate::FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Tracked layers, in registration order; sketch columns follow this order.
    pub layers: Vec<LayerSpec>,
    /// Seed of all projections.
    pub projection_seed: u64,
    /// How projection entries are drawn.
    pub projection: ProjectionKind,
    /// The training loss's reduction (already undone in sketches and factors).
    pub loss_reduction: LossReduction,
    /// Steps per window.
    pub window_steps: u64,
    /// Fisher used for the window fits.
    pub fisher: FisherLabels,
    /// How the sketches are projected (format 1 stores, which lack the field, are
    /// [`SketchScheme::Random`]). Under [`SketchScheme::Eigenbasis`] a window's projection is
    /// recorded in its factors ([`LayerFactors::sketch_basis`]); windows without one use the
    /// seeded projections.
    #[serde(default)]
    pub sketch_scheme: SketchScheme,
}

impl RunInfo {
    /// Regenerates `(P_a, P_g)` of layer `index` from the seed.
    pub fn projections(&self, index: usize) -> Option<(Projection, Projection)> {
        let l = self.layers.get(index)?;
        let pa = Projection::generate(
            self.projection,
            self.projection_seed,
            &l.name,
            Side::Input,
            l.d_in_aug(),
            l.k_a,
        )?;
        let pg = Projection::generate(
            self.projection,
            self.projection_seed,
            &l.name,
            Side::Output,
            l.d_out,
            l.k_g,
        )?;
        Some((pa, pg))
    }
}

/// How per-document gradients are projected into sketches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SketchScheme {
    /// Seeded random projections `K_n = P_gᵀ G_n P_a`, fixed for the run (the only scheme of
    /// format 1); the query is preconditioned in the full space and projected alike.
    #[default]
    Random,
    /// Coordinates of the per-document gradient in the EK-FAC eigenbasis of the previous window's
    /// factors: `K_n[c] = (Q_Sᵀ G_n Q_A)_{i_c j_c}` for the `k_g·k_a` pairs `c` that matter most
    /// by `select`, drawn from at most `max_side` eigenvectors per side. The first window of a
    /// run has no previous factors and uses the seeded projections. Scored with EK-FAC restricted
    /// to the kept coordinates, whose corrected eigenvalues are the mean squares of the stored
    /// entries themselves.
    Eigenbasis {
        /// How the kept coordinates are ranked.
        select: CoordinateSelection,
        /// Most eigenvectors used per side (bounds the sketch kernel's block `|I| × |J|`).
        max_side: usize,
    },
}

/// How [`SketchScheme::Eigenbasis`] ranks the coordinates `(i, j)` of the eigenbasis, with `Λ`
/// the corrected eigenvalues (KFAC's where none were fitted) and `λ = 0.1 × mean Λ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CoordinateSelection {
    /// Largest `Λ_ij` first: the directions holding the documents' gradient energy.
    #[default]
    Eigenvalue,
    /// Largest `Λ_ij / (Λ_ij + λ)²` first: the expected contribution of a coordinate to a
    /// preconditioned score for an isotropic query (favours directions near the damping).
    Contribution,
}

/// The projection a window's sketches of one layer were made with, under
/// [`SketchScheme::Eigenbasis`]: `K_n[c] = (P_gᵀ G_n P_a)[coords[c]]`, `P_g`, `P_a` being
/// eigenvectors of a window's `S` and `A` (sign-canonical: each column's largest-magnitude entry
/// is positive).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SketchBasis {
    /// The window whose factors the eigenvectors come from (the previous window at training
    /// time, the same one post hoc).
    pub from_window: u32,
    /// Columns of `P_a` (eigenvectors of `A`).
    pub k_a: usize,
    /// Columns of `P_g` (eigenvectors of `S`).
    pub k_g: usize,
    /// `P_a`, `d_in_aug × k_a` row-major (the f32 values the hook used, widened).
    pub p_a: Vec<f64>,
    /// `P_g`, `d_out × k_g` row-major.
    pub p_g: Vec<f64>,
    /// The stored coordinates, most important first: index `i·k_a + j` into the `k_g × k_a`
    /// block `P_gᵀ G_n P_a`; as many as the layer's [`LayerSpec::sketch_len`].
    pub coords: Vec<u32>,
    /// Mean over the window's rows of each stored coordinate squared: EK-FAC's corrected
    /// eigenvalues on the kept coordinates, from every document of the window. `None` until the
    /// window closes.
    pub second_moment: Option<Vec<f64>>,
    /// Rows the second moment was averaged over.
    pub rows: u64,
}

/// Per-row metadata of a sketch batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SketchRowMeta {
    /// The document's id.
    pub doc_id: u64,
    /// Mean training loss (nats per token) of the document's tokens in this step, if given.
    pub loss: Option<f32>,
    /// Loss-bearing tokens of the document in this step.
    pub tokens: u32,
    /// The document's source label.
    pub source: String,
}

/// The sketches of every document of one training step, column-major by layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SketchBatch {
    /// Global optimizer step (0-based) whose gradient this is.
    pub step: u64,
    /// Window the step belongs to.
    pub window: u32,
    /// Learning rate used by this step.
    pub learning_rate: f64,
    /// One entry per row (document).
    pub rows: Vec<SketchRowMeta>,
    /// Per layer (in [`RunInfo::layers`] order): `rows × k_g × k_a` values; row r's sketch is
    /// `sketches[l][r*k_g*k_a..]`, itself row-major `k_g × k_a`: `K[i][j] = Σ_t (P_gᵀ g_t)_i (P_aᵀ a_t)_j`.
    pub sketches: Vec<Vec<f32>>,
    /// Documents of this step left out because a captured value was NaN or ∞ (the hook's
    /// `non_finite = skip` policy): no row above, not in the step's factors.
    pub skipped: Vec<SkippedRow>,
}

/// A document of a step that the hook left out because a captured input or output gradient
/// held NaN or ∞ (recorded in the store's manifest, `non_finite`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedRow {
    /// The step.
    pub step: u64,
    /// The document.
    pub doc_id: u64,
    /// The first tracked layer where the value was found.
    pub layer: String,
    /// `input` or `output_gradient`.
    pub value: String,
}

impl SketchBatch {
    /// The sketch of row `row` in layer `layer`.
    pub fn sketch(&self, layer: usize, row: usize, len: usize) -> Option<&[f32]> {
        self.sketches.get(layer)?.get(row * len..(row + 1) * len)
    }
}

/// A symmetric matrix's eigendecomposition `M = Q diag(λ) Qᵀ` (f64, `Q` row-major, eigenvectors in
/// columns, eigenvalues ascending).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Eigenbasis {
    /// Dimension.
    pub dim: usize,
    /// `dim × dim`, row-major; column `j` is the eigenvector of `values[j]`.
    pub vectors: Vec<f64>,
    /// Eigenvalues, ascending.
    pub values: Vec<f64>,
}

/// The fitted factors of one layer in one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerFactors {
    /// Layer name.
    pub name: String,
    /// `A = Σ a aᵀ / N_tokens`, `d_in_aug²`, row-major.
    pub a: Vec<f64>,
    /// `S = Σ g gᵀ / N_tokens`, `d_out²`, row-major (g of the per-document sum loss).
    pub s: Vec<f64>,
    /// Tokens that went into `A` and `S`.
    pub tokens: u64,
    /// Mean loss-bearing tokens per document in the factor steps: the scale between the per-token
    /// Kronecker product `S ⊗ A` and the per-example Fisher (KFAC eigenvalues are multiplied by it).
    pub tokens_per_example: f64,
    /// Eigendecomposition of `A`.
    pub eig_a: Eigenbasis,
    /// Eigendecomposition of `S`.
    pub eig_s: Eigenbasis,
    /// Corrected eigenvalues `Λ_ij = mean_n (Q_Sᵀ G_n Q_A)_ij²`, `d_out × d_in_aug` row-major;
    /// `None` when the window had no fit pass (then use the KFAC fallback).
    pub corrected: Option<Vec<f64>>,
    /// Examples the corrected eigenvalues were averaged over.
    pub corrected_examples: u64,
    /// The projection of this window's sketches of the layer under [`SketchScheme::Eigenbasis`];
    /// `None`: the run's seeded projections.
    #[serde(default)]
    pub sketch_basis: Option<SketchBasis>,
}

/// Everything the hook produces when it closes a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// Window index (0-based).
    pub window: u32,
    /// First step of the window.
    pub first_step: u64,
    /// Last step of the window (inclusive); the checkpoint is the model after this step.
    pub last_step: u64,
    /// Learning rate of every step of the window, in order.
    pub learning_rates: Vec<f64>,
    /// Per tracked layer, in [`RunInfo::layers`] order.
    pub layers: Vec<LayerFactors>,
}
