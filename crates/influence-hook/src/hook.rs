//! The hook: captures, factors, sketches and windows.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::Module;
use burn::tensor::Int;
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use influence_core::{
    FORMAT_VERSION, FisherLabels, LayerFactors, LayerSpec, LossReduction, RunInfo, Sink,
    SketchBasis, SketchBatch, SketchRowMeta, SketchScheme, SkippedRow, WindowRecord,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::kernels::{Segments, project};
use crate::tap::{Captured, Tap};
use crate::{HookConfig, HookError, NonFinitePolicy};

/// A document of a training batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocRef {
    /// The document's id in the corpus.
    pub id: u64,
    /// Its source label (e.g. `arithmetic`, `wordnet`).
    pub source: String,
}

/// What the hook needs to know about a training batch besides the tensors it captures.
#[derive(Clone, Debug)]
pub struct StepBatch {
    /// Sequences in the batch.
    pub batch_size: usize,
    /// Positions per sequence.
    pub seq_len: usize,
    /// For each position (row-major `[batch, seq]`): index into `docs` of the document whose loss
    /// the position carries, or `-1` for padding (masked out of sketches and factors).
    pub doc_index: Vec<i32>,
    /// The documents of the batch.
    pub docs: Vec<DocRef>,
    /// Loss-bearing tokens for [`LossReduction::MeanOverTokens`], when not every document
    /// position carries a loss (default: the number of positions with `doc_index ≥ 0`).
    pub loss_tokens: Option<usize>,
    /// Per-position training loss `[batch, seq]` (detached), to record each document's loss.
    pub token_loss: Option<Tensor<2>>,
    /// The factor the reduced loss was multiplied by before `backward()`: a mixed-precision loss
    /// scaler's scale, or `1/k` when `k` micro-batches are accumulated into one optimizer step
    /// (or both, multiplied). The captured gradients are divided by it, so that sketches and
    /// factors are those of the unscaled loss. `None` means 1.
    pub loss_multiplier: Option<f32>,
}

/// Labels for a window-fit forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitLabels {
    /// The batch's own labels.
    Empirical,
    /// Labels sampled from the model's softmax with this seed.
    Sampled {
        /// RNG seed for the sampling.
        seed: u64,
    },
}

/// The loss the hook re-runs at a window's checkpoint to fit the corrected eigenvalues.
///
/// Implemented by the user's model for its batch type `B`; the loss must use the same reduction
/// as training ([`HookConfig::loss_reduction`]).
pub trait FitLoss<B> {
    /// Forward pass and loss of `batch` with the given labels (autodiff enabled).
    fn fit_loss(&self, batch: &B, labels: FitLabels) -> Tensor<1>;
}

/// Per-layer state on the training device.
struct LayerDev {
    spec: LayerSpec,
    /// `P_a`: `[d_in_aug, k_a]`.
    p_a: Tensor<2>,
    /// `P_g`: `[d_out, k_g]`.
    p_g: Tensor<2>,
    a_sum: Option<Tensor<2>>,
    s_sum: Option<Tensor<2>>,
    tokens: u64,
    /// The window's eigenbasis projection (`None`: the seeded `p_a`, `p_g`).
    basis: Option<BasisDev>,
}

/// An eigenbasis projection on the device, with the running sum of its sketches' squares.
struct BasisDev {
    record: SketchBasis,
    /// `[d_in_aug, |J|]`.
    p_a: Tensor<2>,
    /// `[d_out, |I|]`.
    p_g: Tensor<2>,
    /// Kept entries of the flattened `|I| × |J|` block.
    gather: Tensor<1, Int>,
    /// `Σ_rows K²` per kept coordinate, `[1, sketch_len]`.
    sq_sum: Option<Tensor<2>>,
    rows: u64,
}

impl BasisDev {
    fn new(record: SketchBasis, device: &Device) -> Self {
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (da, dg) = (
            record.p_a.len() / record.k_a.max(1),
            record.p_g.len() / record.k_g.max(1),
        );
        let idx: Vec<i64> = record.coords.iter().map(|&c| i64::from(c)).collect();
        Self {
            p_a: Tensor::from_data(TensorData::new(f32s(&record.p_a), [da, record.k_a]), device),
            p_g: Tensor::from_data(TensorData::new(f32s(&record.p_g), [dg, record.k_g]), device),
            gather: Tensor::from_data(TensorData::new(idx, [record.coords.len()]), device),
            record,
            sq_sum: None,
            rows: 0,
        }
    }

    /// The record with the window's second moment filled in.
    fn finish(self) -> Result<SketchBasis, HookError> {
        let mut record = self.record;
        if let Some(sq) = self.sq_sum {
            let rows = self.rows.max(1) as f64;
            record.second_moment = Some(
                read(sq, "sketch second moment")?
                    .iter()
                    .map(|&v| f64::from(v) / rows)
                    .collect(),
            );
        }
        record.rows = self.rows;
        Ok(record)
    }
}

struct Window {
    index: u32,
    first_step: u64,
    learning_rates: Vec<f64>,
    /// Documents and their loss tokens seen in the window's factor steps.
    factor_docs: u64,
    factor_doc_tokens: u64,
}

struct State<B> {
    config: HookConfig,
    sink: Box<dyn Sink>,
    run: Option<RunInfo>,
    device: Option<Device>,
    layers: Vec<LayerDev>,
    step: u64,
    window: Window,
    pending: Option<SketchBatch>,
    reservoir: Vec<(B, StepBatch)>,
    reservoir_seen: u64,
    /// Factors whose eigenbasis the first window's sketches use (resume, post hoc).
    initial_basis: Option<WindowRecord>,
    rng: StdRng,
    failed: Option<String>,
    finished: bool,
    /// Non-finite screening: documents seen, documents skipped, consecutive all-skipped steps.
    screened: u64,
    skipped: u64,
    bad_steps: u64,
}

/// The training-time hook. Cheap to clone (clones share state), so it can live inside a model as
/// a `#[module(skip)]` field and be used from burn-train's `TrainStep`.
///
/// `B` is the user's batch type: the hook keeps a few batches of each window to re-run them at
/// the window's checkpoint for the EK-FAC eigenvalue correction.
pub struct Hook<B> {
    state: Arc<Mutex<State<B>>>,
    tap: Tap,
}

impl<B> Clone for Hook<B> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            tap: self.tap.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Hook<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("layers", &self.tap.layer_names())
            .finish_non_exhaustive()
    }
}

impl<B: Clone + Send + 'static> Hook<B> {
    /// A hook writing to `sink`. Build the model with [`Hook::tap`] afterwards.
    pub fn new(config: HookConfig, sink: impl Sink + 'static) -> Result<Self, HookError> {
        config.validate()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            tap: Tap::new(config.clone()),
            state: Arc::new(Mutex::new(State {
                config,
                sink: Box::new(sink),
                run: None,
                device: None,
                layers: Vec::new(),
                step: 0,
                window: Window {
                    index: 0,
                    first_step: 0,
                    learning_rates: Vec::new(),
                    factor_docs: 0,
                    factor_doc_tokens: 0,
                },
                pending: None,
                reservoir: Vec::new(),
                reservoir_seen: 0,
                initial_basis: None,
                rng,
                failed: None,
                finished: false,
                screened: 0,
                skipped: 0,
                bad_steps: 0,
            })),
        })
    }

    /// The tap to build tracked layers with.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Continues a run at `step` (after restoring the model from the checkpoint of the window
    /// that ended just before it): window numbering and steps resume from there.
    pub fn resume_at(&self, step: u64) -> Result<(), HookError> {
        let mut st = self.lock();
        if st.run.is_some() {
            return Err(HookError::Config(
                "resume_at: the run has already started".into(),
            ));
        }
        let w = st.config.window_steps;
        if !step.is_multiple_of(w) {
            return Err(HookError::Config(format!(
                "resume_at: step {step} is not a window boundary (window_steps = {w})"
            )));
        }
        st.step = step;
        st.window.index = u32::try_from(step / w)
            .map_err(|_| HookError::Config(format!("resume_at: step {step} too large")))?;
        st.window.first_step = step;
        Ok(())
    }

    /// Under [`SketchScheme::Eigenbasis`], makes the current window's sketches use the eigenbasis
    /// of `factors` (the window that ended just before [`Hook::resume_at`]'s step when a run
    /// continues, or the checkpoint's own factors post hoc) instead of the seeded projections.
    /// Call before the first step.
    pub fn basis_from(&self, factors: &WindowRecord) -> Result<(), HookError> {
        let mut st = self.lock();
        if st.run.is_some() {
            return Err(HookError::Config(
                "basis_from: the run has already started".into(),
            ));
        }
        if !matches!(
            st.config.effective_scheme(),
            SketchScheme::Eigenbasis { .. }
        ) {
            return Err(HookError::Config(
                "basis_from: sketch_scheme is not eigenbasis (or projection is identity)".into(),
            ));
        }
        st.initial_basis = Some(factors.clone());
        Ok(())
    }

    /// Arms the tracked layers: the next forward pass records inputs and adds probes.
    pub fn arm(&self) {
        self.tap.arm();
    }

    /// Marks the hook failed with `error` (for callers that cannot return errors, such as
    /// burn-train's `TrainStep::step`); every later call reports it, [`Hook::finish`] included.
    pub fn fail(&self, error: HookError) {
        tracing::error!(%error, "influence hook failed");
        let mut st = self.lock();
        if st.failed.is_none() {
            st.failed = Some(error.to_string());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the probes' gradients out of `grads` (removing them; parameter gradients are left
    /// untouched), and computes this step's sketches and factor contributions.
    ///
    /// Call after `loss.backward()` of a forward run after [`Hook::arm`], before building
    /// `GradientsParams`. `item` is the batch (kept if the reservoir samples it).
    ///
    /// With gradient accumulation (several forward/backward passes per optimizer step), call
    /// `arm`, forward, backward and `capture` for every micro-batch, then [`Hook::end_step`] once:
    /// the micro-batches' rows are merged into one row per document for the step (a document
    /// split across micro-batches gets the sum of its parts, as its gradient is), and every
    /// micro-batch's tokens enter the factors. Pass `1/k` (times any loss-scaler scale) in
    /// [`StepBatch::loss_multiplier`] if the loss was divided by the `k` micro-batches.
    pub fn capture(
        &self,
        grads: &mut Gradients,
        batch: &StepBatch,
        item: &B,
    ) -> Result<(), HookError> {
        let captures = self.tap.take();
        let mut st = self.lock();
        st.check()?;
        if captures.is_empty() {
            return Err(HookError::Order(
                "no tracked layer ran since arm(): call hook.arm() before the forward pass".into(),
            ));
        }
        let result = st.capture(&self.tap, captures, grads, batch, item);
        if let Err(e) = &result {
            st.failed = Some(e.to_string());
        }
        result
    }

    /// Ends the step: sends its sketches (with the step's learning rate) to the sink and, when the
    /// window is full, closes it at `model` (the model after this step's optimizer update).
    pub fn end_step<M>(&self, learning_rate: f64, model: &M) -> Result<(), HookError>
    where
        M: Module + FitLoss<B>,
    {
        let mut st = self.lock();
        st.check()?;
        let result = st.end_step(learning_rate).and_then(|due| {
            if due {
                st.close_window(&self.tap, model)
            } else {
                Ok(())
            }
        });
        if let Err(e) = &result {
            st.failed = Some(e.to_string());
        }
        result
    }

    /// Closes the last (possibly partial) window at `model` and finishes the sink.
    pub fn finish<M>(&self, model: &M) -> Result<(), HookError>
    where
        M: Module + FitLoss<B>,
    {
        let mut st = self.lock();
        st.check()?;
        if st.finished {
            return Ok(());
        }
        if st.pending.is_some() {
            return Err(HookError::Order(
                "finish called after capture without end_step".into(),
            ));
        }
        if st.step > st.window.first_step {
            st.close_window(&self.tap, model)?;
        }
        st.sink.finish()?;
        st.finished = true;
        Ok(())
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.lock().step
    }

    /// The run info (after the first captured step).
    pub fn run_info(&self) -> Option<RunInfo> {
        self.lock().run.clone()
    }
}

pub(crate) fn read(t: Tensor<2>, what: &str) -> Result<Vec<f32>, HookError> {
    t.try_into_vec_as::<f32>()
        .map_err(|e| HookError::Tensor(format!("reading {what}: {e:?}")))
}

impl StepBatch {
    /// The factor that turns a loss over this batch reduced with `reduction` (and multiplied by
    /// [`StepBatch::loss_multiplier`]) back into the sum over its loss-bearing tokens (what a
    /// probe's gradient is multiplied by).
    pub fn loss_scale(&self, reduction: LossReduction) -> f32 {
        let valid = self.doc_index.iter().filter(|&&d| d >= 0).count();
        scale_of(reduction, self, valid)
    }

    /// Checks [`StepBatch::loss_multiplier`]: finite and positive.
    fn check_multiplier(&self) -> Result<(), HookError> {
        match self.loss_multiplier {
            Some(m) if !(m.is_finite() && m > 0.0) => Err(HookError::Batch(format!(
                "StepBatch.loss_multiplier is {m}: it must be finite and positive (the factor \
                 the loss was multiplied by before backward)"
            ))),
            _ => Ok(()),
        }
    }
}

fn scale_of(reduction: LossReduction, batch: &StepBatch, valid: usize) -> f32 {
    let reduced = match reduction {
        LossReduction::Sum => 1.0,
        LossReduction::MeanOverTokens => batch.loss_tokens.unwrap_or(valid) as f32,
        LossReduction::MeanOverSequences => batch.batch_size as f32,
    };
    reduced / batch.loss_multiplier.unwrap_or(1.0)
}

/// `(layer index, input [b, s, d_in], output gradient [b, s, d_out])` of every tracked call.
pub(crate) type LayerGrads = Vec<(usize, Tensor<3>, Tensor<3>)>;

/// Probe gradients, rescaled to the per-document sum loss, with the matching inputs.
pub(crate) fn gradients(
    captures: Vec<Captured>,
    grads: &mut Gradients,
    names: &[String],
    scale: f32,
) -> Result<LayerGrads, HookError> {
    captures
        .into_iter()
        .map(|c| {
            let g = c
                .probe
                .grad_remove(grads)
                .ok_or_else(|| HookError::NoGradient(names[c.layer].clone()))?;
            let g = if scale == 1.0 { g } else { g * scale };
            Ok((c.layer, c.input, g))
        })
        .collect()
}

impl<B: Clone + Send + 'static> State<B> {
    fn names(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.spec.name.clone()).collect()
    }

    fn check(&self) -> Result<(), HookError> {
        match (&self.failed, self.finished) {
            (Some(e), _) => Err(HookError::Failed(e.clone())),
            (None, true) => Err(HookError::Order("the hook has finished".into())),
            _ => Ok(()),
        }
    }

    fn begin(&mut self, tap: &Tap, device: &Device) -> Result<(), HookError> {
        let specs = match tap.state() {
            Some(mut t) => {
                t.frozen = true;
                t.layers.clone()
            }
            None => Vec::new(),
        };
        if specs.is_empty() {
            return Err(HookError::Config(
                "no layer is tracked: check include/exclude patterns".into(),
            ));
        }
        let run = RunInfo {
            format_version: FORMAT_VERSION,
            layers: specs.clone(),
            projection_seed: self.config.projection_seed,
            projection: self.config.projection,
            loss_reduction: self.config.loss_reduction,
            window_steps: self.config.window_steps,
            fisher: self.config.fisher,
            sketch_scheme: self.config.effective_scheme(),
        };
        let mut layers = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let (pa, pg) = run.projections(i).ok_or_else(|| {
                HookError::Config(format!(
                    "layer {}: cannot build projections ({:?} with k_a={}, k_g={})",
                    spec.name, run.projection, spec.k_a, spec.k_g
                ))
            })?;
            layers.push(LayerDev {
                p_a: Tensor::from_data(TensorData::new(pa.values, [pa.d, pa.k]), device),
                p_g: Tensor::from_data(TensorData::new(pg.values, [pg.d, pg.k]), device),
                spec,
                a_sum: None,
                s_sum: None,
                tokens: 0,
                basis: None,
            });
        }
        if let Some(prev) = self.initial_basis.take() {
            for l in &mut layers {
                let f = prev
                    .layers
                    .iter()
                    .find(|f| f.name == l.spec.name)
                    .ok_or_else(|| {
                        HookError::Config(format!(
                            "basis_from: window {} has no factors for layer {}",
                            prev.window, l.spec.name
                        ))
                    })?;
                l.basis = next_basis(&self.config, &l.spec, f, prev.window, device)?;
            }
        }
        tracing::info!(layers = layers.len(), "influence hook started");
        self.sink.begin(&run)?;
        self.run = Some(run);
        self.layers = layers;
        self.device = Some(device.clone());
        Ok(())
    }

    fn capture(
        &mut self,
        tap: &Tap,
        captures: Vec<Captured>,
        grads: &mut Gradients,
        batch: &StepBatch,
        item: &B,
    ) -> Result<(), HookError> {
        let device = captures[0].input.device();
        if self.run.is_none() {
            self.begin(tap, &device)?;
        }
        batch.check_multiplier()?;
        let segs = Segments::new(batch, &device)?;
        let scale = scale_of(self.config.loss_reduction, batch, segs.valid.len());
        let captured = gradients(captures, grads, &self.names(), scale)?;
        for (l, a, g) in &captured {
            let spec = &self.layers[*l].spec;
            let (b, t) = (batch.batch_size, batch.seq_len);
            for (what, dims, d) in [
                ("input", a.dims(), spec.d_in),
                ("output gradient", g.dims(), spec.d_out),
            ] {
                if dims != [b, t, d] {
                    return Err(HookError::Batch(format!(
                        "layer {}: its {what} is {dims:?}, but the StepBatch says batch_size × \
                         seq_len = {b} × {t} and the layer has {d} features: pass the StepBatch \
                         of the batch the model ran on",
                        spec.name
                    )));
                }
            }
        }
        let (captured, segs, skipped) = self.screen_non_finite(captured, segs, batch, &device)?;
        // A batch with a skipped document is not kept for the window fit: its re-run at the
        // checkpoint would bring the NaN back into the corrected eigenvalues.
        let clean = skipped.is_empty();
        if segs.valid.is_empty() {
            // Only padding (the probe's gradients are taken all the same): nothing to attribute
            // and nothing to learn the curvature from. The step counts (its learning rate is
            // recorded) but adds no rows, no factor tokens and no fit batch — as if the batch
            // were absent. (Its gradients are zero, or NaN from a 0/0 mean, and
            // `factor_tokens` would read "no tokens" as "every token".)
            self.add_pending(SketchBatch {
                step: self.step,
                window: self.window.index,
                learning_rate: f64::NAN,
                rows: Vec::new(),
                sketches: vec![Vec::new(); self.layers.len()],
                skipped,
            });
            return Ok(());
        }

        let in_window = self.step - self.window.first_step;
        let factor_step = self.config.factors && in_window.is_multiple_of(self.config.factor_every);
        if factor_step {
            let subsample =
                segs.factor_tokens(self.config.factor_token_fraction, &mut self.rng, &device);
            for (layer, a, g) in &captured {
                self.accumulate_factors(*layer, a.clone(), g.clone(), subsample.as_ref());
            }
            self.window.factor_docs += segs.docs.len() as u64;
            self.window.factor_doc_tokens += segs.valid.len() as u64;
        }

        // The first window's basis comes from its first batch that has tokens (a padding-only
        // first step leaves it to the next); `warm_up_basis` skips layers that have one.
        if self.config.sketches && self.layers.iter().any(|l| l.basis.is_none()) {
            self.warm_up_basis(&captured, &segs, &device)?;
        }
        let sketches = if self.config.sketches {
            self.sketch(&captured, &segs)?
        } else {
            vec![Vec::new(); self.layers.len()]
        };
        let losses = match &batch.token_loss {
            Some(t) if self.config.sketches => Some(read(t.clone(), "token_loss")?),
            _ => None,
        };
        let rows = if self.config.sketches {
            segs.docs
                .iter()
                .zip(&segs.tokens)
                .map(|(&di, &tokens)| {
                    let doc = &batch.docs[di];
                    let loss = losses.as_ref().map(|l| {
                        let sum: f32 = batch
                            .doc_index
                            .iter()
                            .zip(l)
                            .filter(|(x, _)| **x == di as i32)
                            .map(|(_, v)| *v)
                            .sum();
                        sum / tokens as f32
                    });
                    SketchRowMeta {
                        doc_id: doc.id,
                        loss,
                        tokens,
                        source: doc.source.clone(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        self.add_pending(SketchBatch {
            step: self.step,
            window: self.window.index,
            learning_rate: f64::NAN,
            rows,
            sketches,
            skipped,
        });

        if self.config.factors && self.config.fit_batches > 0 && clean {
            self.reservoir_offer(item, batch);
        }
        Ok(())
    }

    /// Finds the tokens whose captured inputs or output gradients hold NaN or ∞ (one read-back
    /// of per-token feature sums: a non-finite value makes its sum non-finite), applies
    /// [`NonFinitePolicy`], zeroes every non-finite value by selection, and turns the affected
    /// documents into padding for this step. Returns the captures, the step's segments without
    /// those documents, and what was skipped.
    fn screen_non_finite(
        &mut self,
        captured: LayerGrads,
        segs: Segments,
        batch: &StepBatch,
        device: &Device,
    ) -> Result<(LayerGrads, Segments, Vec<SkippedRow>), HookError> {
        let (b, t) = (batch.batch_size, batch.seq_len);
        let sums: Vec<Tensor<2>> = captured
            .iter()
            .flat_map(|(_, a, g)| {
                [
                    a.clone().sum_dim(2).reshape([b * t, 1]),
                    g.clone().sum_dim(2).reshape([b * t, 1]),
                ]
            })
            .collect();
        let columns = sums.len();
        let flags = read(Tensor::cat(sums, 1), "the non-finite screen")?;
        let docs_seen = segs.docs.len() as u64;
        if flags.iter().all(|v| v.is_finite()) {
            self.count_screened(docs_seen, 0)?;
            return Ok((captured, segs, Vec::new()));
        }
        // The first layer and value of each affected document (padding positions affect none).
        let mut bad: std::collections::BTreeMap<usize, (String, &'static str)> = Default::default();
        for (tok, row) in flags.chunks(columns).enumerate() {
            let Ok(di) = usize::try_from(batch.doc_index[tok]) else {
                continue;
            };
            if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                let layer = self.layers[captured[c / 2].0].spec.name.clone();
                let value = if c % 2 == 0 {
                    "input"
                } else {
                    "output_gradient"
                };
                bad.entry(di).or_insert((layer, value));
            }
        }
        let skipped: Vec<SkippedRow> = bad
            .iter()
            .map(|(&di, (layer, value))| SkippedRow {
                step: self.step,
                doc_id: batch.docs[di].id,
                layer: layer.clone(),
                value: (*value).to_owned(),
            })
            .collect();
        if let (NonFinitePolicy::Fail, Some(s)) = (self.config.non_finite, skipped.first()) {
            return Err(HookError::NonFinite(format!(
                "step {}: document {}: layer {}: the {} holds NaN or ∞ (non_finite = fail)",
                s.step,
                s.doc_id,
                s.layer,
                s.value.replace('_', " ")
            )));
        }
        for s in &skipped {
            tracing::warn!(
                step = s.step,
                document = s.doc_id,
                layer = %s.layer,
                value = %s.value,
                "non-finite captured values: the document is left out of this step"
            );
        }
        self.count_screened(docs_seen, skipped.len() as u64)?;
        let zero = |x: Tensor<3>| {
            let bad = x.clone().is_finite().bool_not();
            x.mask_fill(bad, 0.0)
        };
        let captured = captured
            .into_iter()
            .map(|(l, a, g)| (l, zero(a), zero(g)))
            .collect();
        let segs = if bad.is_empty() {
            segs
        } else {
            let mut kept = batch.clone();
            for d in &mut kept.doc_index {
                if usize::try_from(*d).is_ok_and(|d| bad.contains_key(&d)) {
                    *d = -1;
                }
            }
            Segments::new(&kept, device)?
        };
        Ok((captured, segs, skipped))
    }

    /// Counts `seen` screened documents of a step, `skipped` of them left out, and fails past
    /// the skip policy's limits.
    fn count_screened(&mut self, seen: u64, skipped: u64) -> Result<(), HookError> {
        self.screened += seen;
        self.skipped += skipped;
        self.bad_steps = if seen > 0 && skipped == seen {
            self.bad_steps + 1
        } else {
            0
        };
        if let NonFinitePolicy::Skip {
            max_fraction,
            min_rows,
            max_bad_steps,
        } = self.config.non_finite
        {
            if self.bad_steps >= max_bad_steps {
                return Err(HookError::NonFinite(format!(
                    "every document of {} consecutive steps (up to step {}) had NaN or ∞ in its \
                     captured values: the model has diverged (non_finite.max_bad_steps = \
                     {max_bad_steps})",
                    self.bad_steps, self.step
                )));
            }
            let share = self.skipped as f64 / self.screened.max(1) as f64;
            if self.screened >= min_rows && share > max_fraction {
                return Err(HookError::NonFinite(format!(
                    "{} of {} documents so far ({:.2} %, up to step {}) had NaN or ∞ in their \
                     captured values, more than non_finite.max_fraction = {max_fraction}",
                    self.skipped,
                    self.screened,
                    100.0 * share,
                    self.step
                )));
            }
        }
        Ok(())
    }

    /// Adds one capture's rows to the step's pending batch: the first capture of a step starts
    /// it; a further micro-batch (gradient accumulation) adds its sketches to the rows of the
    /// documents already there (sketches are linear in the gradient) and appends the others.
    /// A document skipped for non-finite values in any micro-batch is left out of the step.
    fn add_pending(&mut self, part: SketchBatch) {
        let Some(p) = &mut self.pending else {
            self.pending = Some(part);
            return;
        };
        let lens: Vec<usize> = self.layers.iter().map(|l| l.spec.sketch_len()).collect();
        let sketched = !part.rows.is_empty() && part.sketches.iter().all(|s| !s.is_empty());
        for (r, row) in part.rows.into_iter().enumerate() {
            let at = p.rows.iter().position(|x| x.doc_id == row.doc_id);
            let j = match at {
                Some(j) => {
                    let x = &mut p.rows[j];
                    x.loss = match (x.loss, row.loss) {
                        (Some(a), Some(b)) => Some(
                            (a * x.tokens as f32 + b * row.tokens as f32)
                                / (x.tokens + row.tokens).max(1) as f32,
                        ),
                        _ => None,
                    };
                    x.tokens += row.tokens;
                    j
                }
                None => {
                    p.rows.push(row);
                    p.rows.len() - 1
                }
            };
            if !sketched {
                continue;
            }
            for ((dst, src), &k) in p.sketches.iter_mut().zip(&part.sketches).zip(&lens) {
                let src = &src[r * k..(r + 1) * k];
                if at.is_some() {
                    for (d, v) in dst[j * k..(j + 1) * k].iter_mut().zip(src) {
                        *d += v;
                    }
                } else {
                    dst.extend_from_slice(src);
                }
            }
        }
        p.skipped.extend(part.skipped);
        // A document skipped in one micro-batch has no whole gradient for the step.
        let gone: Vec<usize> = (0..p.rows.len())
            .filter(|&j| p.skipped.iter().any(|s| s.doc_id == p.rows[j].doc_id))
            .collect();
        for &j in gone.iter().rev() {
            p.rows.remove(j);
            for (s, &k) in p.sketches.iter_mut().zip(&lens) {
                if s.len() >= (j + 1) * k {
                    s.drain(j * k..(j + 1) * k);
                }
            }
        }
    }

    fn reservoir_offer(&mut self, item: &B, batch: &StepBatch) {
        self.reservoir_seen += 1;
        // The window fit re-runs the batch with the model's own fit loss, which the user's
        // multiplier does not scale.
        let keep = StepBatch {
            token_loss: None,
            loss_multiplier: None,
            ..batch.clone()
        };
        if self.reservoir.len() < self.config.fit_batches {
            self.reservoir.push((item.clone(), keep));
        } else {
            let j = self.rng.random_range(0..self.reservoir_seen);
            if let Ok(j) = usize::try_from(j)
                && j < self.reservoir.len()
            {
                self.reservoir[j] = (item.clone(), keep);
            }
        }
    }

    fn accumulate_factors(
        &mut self,
        layer: usize,
        a: Tensor<3>,
        g: Tensor<3>,
        subsample: Option<&(burn::tensor::Tensor<1, burn::tensor::Int>, usize)>,
    ) {
        let l = &mut self.layers[layer];
        let (aa, gg, n) = second_moments(a, g, subsample.map(|(i, m)| (i, *m)), l.spec.bias);
        l.a_sum = Some(match l.a_sum.take() {
            Some(t) => t + aa,
            None => aa,
        });
        l.s_sum = Some(match l.s_sum.take() {
            Some(t) => t + gg,
            None => gg,
        });
        l.tokens += n as u64;
    }

    /// Under [`SketchScheme::Eigenbasis`], a window that starts without a basis (the first window
    /// of a run) takes one from its first step's own batch: `A`, `S` of this step's tokens, their
    /// eigenbases, coordinates ranked by the KFAC eigenvalues. A one-step warm-up, with no extra
    /// pass: it beats random projections because the scorer's eigenvalues on the kept
    /// coordinates come from the window's own sketches whatever the basis is.
    fn warm_up_basis(
        &mut self,
        captured: &LayerGrads,
        segs: &Segments,
        device: &Device,
    ) -> Result<(), HookError> {
        if !matches!(
            self.config.effective_scheme(),
            SketchScheme::Eigenbasis { .. }
        ) {
            return Ok(());
        }
        let docs = segs.docs.len().max(1) as f64;
        let tokens_per_example = segs.valid.len() as f64 / docs;
        let idx: Vec<i64> = segs.valid.iter().map(|&i| i as i64).collect();
        let valid = Tensor::<1, Int>::from_data(TensorData::new(idx, [segs.valid.len()]), device);
        for li in 0..self.layers.len() {
            if self.layers[li].basis.is_some() {
                continue;
            }
            let spec = self.layers[li].spec.clone();
            let (mut a_sum, mut g_sum, mut n): (Option<Tensor<2>>, Option<Tensor<2>>, usize) =
                (None, None, 0);
            for (_, a, g) in captured.iter().filter(|c| c.0 == li) {
                let (aa, gg, m) = second_moments(
                    a.clone(),
                    g.clone(),
                    Some((&valid, segs.valid.len())),
                    spec.bias,
                );
                a_sum = Some(a_sum.map_or(aa.clone(), |t| t + aa));
                g_sum = Some(g_sum.map_or(gg.clone(), |t| t + gg));
                n += m;
            }
            let (Some(a_sum), Some(g_sum)) = (a_sum, g_sum) else {
                return Err(HookError::NoGradient(spec.name.clone()));
            };
            let n = n.max(1) as f64;
            let mean = |t: Tensor<2>, what: &str| -> Result<Vec<f64>, HookError> {
                Ok(read(t, what)?.iter().map(|&v| f64::from(v) / n).collect())
            };
            let a = mean(a_sum, "warm-up A")?;
            let s = mean(g_sum, "warm-up S")?;
            let (da, ds) = (spec.d_in_aug(), spec.d_out);
            let f = LayerFactors {
                name: spec.name.clone(),
                eig_a: influence_ekfac::eigh_named(&a, da, &format!("{}: warm-up A", spec.name))?,
                eig_s: influence_ekfac::eigh_named(&s, ds, &format!("{}: warm-up S", spec.name))?,
                a,
                s,
                tokens: n as u64,
                tokens_per_example,
                corrected: None,
                corrected_examples: 0,
                sketch_basis: None,
            };
            self.layers[li].basis = next_basis(&self.config, &spec, &f, self.window.index, device)?;
        }
        Ok(())
    }

    /// Sketches of every layer, read to the host in one transfer.
    fn sketch(
        &mut self,
        captured: &[(usize, Tensor<3>, Tensor<3>)],
        segs: &Segments,
    ) -> Result<Vec<Vec<f32>>, HookError> {
        let mut per_layer: Vec<Option<Tensor<2>>> = vec![None; self.layers.len()];
        for (layer, a, g) in captured {
            let l = &self.layers[*layer];
            let (p_a, p_g) = match &l.basis {
                Some(b) => (&b.p_a, &b.p_g),
                None => (&l.p_a, &l.p_g),
            };
            let ap = project(a.clone(), p_a, l.spec.bias);
            let gp = project(g.clone(), p_g, false);
            let k = segs.outer(gp, ap);
            per_layer[*layer] = Some(match per_layer[*layer].take() {
                Some(t) => t + k,
                None => k,
            });
        }
        let d = segs.docs.len();
        let mut widths = Vec::with_capacity(self.layers.len());
        let mut parts = Vec::with_capacity(self.layers.len());
        for (l, t) in self.layers.iter_mut().zip(per_layer) {
            let mut t = t.ok_or_else(|| HookError::NoGradient(l.spec.name.clone()))?;
            if let Some(b) = &mut l.basis {
                t = t.select(1, b.gather.clone());
                let sq = t.clone().powf_scalar(2.0).sum_dim(0);
                b.sq_sum = Some(match b.sq_sum.take() {
                    Some(s) => s + sq,
                    None => sq,
                });
                b.rows += d as u64;
            }
            widths.push(l.spec.sketch_len());
            parts.push(t);
        }

        let all = read(Tensor::cat(parts, 1), "sketches")?;
        let total: usize = widths.iter().sum();
        let mut out: Vec<Vec<f32>> = widths.iter().map(|w| Vec::with_capacity(d * w)).collect();
        for row in all.chunks_exact(total) {
            let mut off = 0;
            for (o, &w) in out.iter_mut().zip(&widths) {
                o.extend_from_slice(&row[off..off + w]);
                off += w;
            }
        }
        Ok(out)
    }

    /// Records the learning rate, sends the pending sketches; returns whether the window is full.
    fn end_step(&mut self, learning_rate: f64) -> Result<bool, HookError> {
        let Some(mut batch) = self.pending.take() else {
            return Err(HookError::Order("end_step without capture".into()));
        };
        batch.learning_rate = learning_rate;
        if self.config.sketches {
            self.sink.sketches(batch)?;
        }
        self.window.learning_rates.push(learning_rate);
        self.step += 1;
        Ok(self.step - self.window.first_step >= self.config.window_steps)
    }

    fn close_window<M: Module + FitLoss<B>>(
        &mut self,
        tap: &Tap,
        model: &M,
    ) -> Result<(), HookError> {
        let span = tracing::info_span!("close_window", window = self.window.index);
        let _enter = span.enter();
        let started = std::time::Instant::now();
        let mut layers = if self.config.factors && !self.layers.is_empty() {
            self.fit_window(tap, model)?
        } else {
            Vec::new()
        };
        let fit_seconds = started.elapsed().as_secs_f64();
        let device = self.device.clone();
        for (l, f) in self.layers.iter_mut().zip(layers.iter_mut()) {
            f.sketch_basis = l.basis.take().map(BasisDev::finish).transpose()?;
            if let Some(device) = &device {
                l.basis = next_basis(&self.config, &l.spec, f, self.window.index, device)?;
            }
        }
        let record = WindowRecord {
            window: self.window.index,
            first_step: self.window.first_step,
            last_step: self.step.saturating_sub(1),
            learning_rates: std::mem::take(&mut self.window.learning_rates),
            layers,
        };
        let serialising = std::time::Instant::now();
        let bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| HookError::Checkpoint(format!("window {}: {e}", record.window)))?;
        let checkpoint_seconds = serialising.elapsed().as_secs_f64();
        self.sink.window(record)?;
        self.sink.checkpoint(self.window.index, bytes.to_vec())?;
        tracing::info!(
            window = self.window.index,
            step = self.step,
            fit_seconds,
            checkpoint_seconds,
            seconds = started.elapsed().as_secs_f64(),
            "window closed"
        );
        self.window.index += 1;
        self.window.first_step = self.step;
        self.window.factor_docs = 0;
        self.window.factor_doc_tokens = 0;
        self.reservoir.clear();
        self.reservoir_seen = 0;
        for l in &mut self.layers {
            l.a_sum = None;
            l.s_sum = None;
            l.tokens = 0;
        }
        Ok(())
    }

    /// Runs the reservoir at the checkpoint: returns per-layer gradients (scaled) and segments.
    fn rerun<M: FitLoss<B>>(
        &self,
        tap: &Tap,
        model: &M,
        labels: impl Fn(usize) -> FitLabels,
    ) -> Result<Vec<(LayerGrads, Segments)>, HookError> {
        let device = self
            .device
            .clone()
            .ok_or_else(|| HookError::Order("window fit before the first step".into()))?;
        let mut out = Vec::with_capacity(self.reservoir.len());
        for (i, (item, batch)) in self.reservoir.iter().enumerate() {
            tap.arm();
            let loss = model.fit_loss(item, labels(i));
            let captures = tap.take();
            let mut grads = loss.backward();
            let segs = Segments::new(batch, &device)?;
            let scale = scale_of(self.config.loss_reduction, batch, segs.valid.len());
            out.push((gradients(captures, &mut grads, &self.names(), scale)?, segs));
        }
        Ok(out)
    }

    fn fit_window<M: Module + FitLoss<B>>(
        &mut self,
        tap: &Tap,
        model: &M,
    ) -> Result<Vec<LayerFactors>, HookError> {
        let device = self
            .device
            .clone()
            .ok_or_else(|| HookError::Order("window fit before the first step".into()))?;
        let base_seed = self.config.seed ^ (u64::from(self.window.index) << 32);
        let sampled = self.config.fisher == FisherLabels::Sampled;
        let labels = |i: usize| {
            if sampled {
                FitLabels::Sampled {
                    seed: base_seed.wrapping_add(i as u64),
                }
            } else {
                FitLabels::Empirical
            }
        };
        let reruns = if self.reservoir.is_empty() {
            Vec::new()
        } else {
            self.rerun(tap, model, labels)?
        };
        let tokens_per_example = if self.window.factor_docs == 0 {
            1.0
        } else {
            self.window.factor_doc_tokens as f64 / self.window.factor_docs as f64
        };

        // Phase 1, per layer on the device: A and S (S from the sampled labels' re-run for the
        // true Fisher), read back in f64.
        let mut moments = Vec::with_capacity(self.layers.len());
        for (li, l) in self.layers.iter().enumerate() {
            let name = &l.spec.name;
            let (Some(a_sum), Some(s_sum)) = (l.a_sum.clone(), l.s_sum.clone()) else {
                return Err(HookError::Order(format!(
                    "layer {name}: window {} has no factor step",
                    self.window.index
                )));
            };
            let n = l.tokens.max(1) as f64;
            let a: Vec<f64> = read(a_sum, "A")?
                .iter()
                .map(|&v| f64::from(v) / n)
                .collect();
            let mut s: Vec<f64> = read(s_sum, "S")?
                .iter()
                .map(|&v| f64::from(v) / n)
                .collect();
            if sampled && !reruns.is_empty() {
                // True Fisher: S from gradients of labels sampled from the model.
                let mut sum: Option<Tensor<2>> = None;
                let mut count = 0usize;
                for (caps, segs) in &reruns {
                    for (_, _, g) in caps.iter().filter(|c| c.0 == li) {
                        let [b, sl, d] = g.dims();
                        let idx: Vec<i64> = segs.valid.iter().map(|&i| i as i64).collect();
                        let gi =
                            Tensor::from_data(TensorData::new(idx, [segs.valid.len()]), &device);
                        let gv = g.clone().reshape([b * sl, d]).select(0, gi);
                        let gg = gv.clone().transpose().matmul(gv);
                        sum = Some(match sum.take() {
                            Some(t) => t + gg,
                            None => gg,
                        });
                        count += segs.valid.len();
                    }
                }
                if let Some(sum) = sum {
                    let c = count.max(1) as f64;
                    s = read(sum, "sampled S")?
                        .iter()
                        .map(|&v| f64::from(v) / c)
                        .collect();
                }
            }
            check_finite(self.window.index, name, "A", Some(&a))?;
            check_finite(self.window.index, name, "S", Some(&s))?;
            moments.push((a, s));
        }
        // Phase 2, on the host: the f64 eigendecompositions of every layer's A and S, the bulk
        // of a close, on all cores (they are independent; the result is the same whatever the
        // number of threads).
        let t = std::time::Instant::now();
        let specs: Vec<(usize, usize, &str)> = self
            .layers
            .iter()
            .map(|l| (l.spec.d_in_aug(), l.spec.d_out, l.spec.name.as_str()))
            .collect();
        let eigs = parallel_map(moments.len() * 2, |i| {
            let (da, ds, name) = specs[i / 2];
            let (a, s) = &moments[i / 2];
            if i % 2 == 0 {
                influence_ekfac::eigh_named(a, da, &format!("{name}: A"))
            } else {
                influence_ekfac::eigh_named(s, ds, &format!("{name}: S"))
            }
        });
        tracing::debug!(
            window = self.window.index,
            factors = eigs.len(),
            seconds = t.elapsed().as_secs_f64(),
            "eigendecompositions"
        );
        let mut eigs = eigs.into_iter();
        // Phase 3, per layer on the device: the corrected eigenvalues from the re-run.
        let mut out = Vec::with_capacity(self.layers.len());
        for ((li, l), (a, s)) in self.layers.iter().enumerate().zip(moments) {
            let name = &l.spec.name;
            let (da, ds) = (l.spec.d_in_aug(), l.spec.d_out);
            let (Some(eig_a), Some(eig_s)) = (eigs.next(), eigs.next()) else {
                return Err(HookError::Order(format!(
                    "layer {name}: an eigendecomposition is missing"
                )));
            };
            let (eig_a, eig_s) = (eig_a?, eig_s?);

            let (corrected, corrected_examples) = if reruns.is_empty() {
                (None, 0)
            } else {
                let to_dev = |v: &[f64], d: usize| {
                    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    Tensor::<2>::from_data(TensorData::new(v, [d, d]), &device)
                };
                let q_a = to_dev(&eig_a.vectors, da);
                let q_s = to_dev(&eig_s.vectors, ds);
                let mut lam: Option<Tensor<2>> = None;
                let mut examples = 0u64;
                for (caps, segs) in &reruns {
                    let mut rot: Option<Tensor<2>> = None;
                    for (_, a, g) in caps.iter().filter(|c| c.0 == li) {
                        let r = segs.outer(
                            project(g.clone(), &q_s, false),
                            project(a.clone(), &q_a, l.spec.bias),
                        );
                        rot = Some(match rot.take() {
                            Some(t) => t + r,
                            None => r,
                        });
                    }
                    let Some(rot) = rot else {
                        return Err(HookError::NoGradient(name.clone()));
                    };
                    let sq = rot.powf_scalar(2.0).sum_dim(0);
                    lam = Some(match lam.take() {
                        Some(t) => t + sq,
                        None => sq,
                    });
                    examples += segs.docs.len() as u64;
                }
                match lam {
                    Some(lam) => {
                        let e = examples.max(1) as f64;
                        let v = read(lam, "corrected eigenvalues")?;
                        (
                            Some(v.iter().map(|&x| f64::from(x) / e).collect()),
                            examples,
                        )
                    }
                    None => (None, 0),
                }
            };
            check_finite(
                self.window.index,
                name,
                "corrected eigenvalues",
                corrected.as_deref(),
            )?;
            out.push(LayerFactors {
                name: name.clone(),
                a,
                s,
                tokens: l.tokens,
                tokens_per_example,
                eig_a,
                eig_s,
                corrected,
                corrected_examples,
                sketch_basis: None,
            });
        }
        Ok(out)
    }
}

/// `f(0..n)` on up to one thread per core (scoped; each thread takes the next index), results
/// in index order.
fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(n);
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break mine;
                        }
                        mine.push((i, f(i)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, v)| v).collect()
}

/// A window's factor values must be finite before anything of the window is written.
fn check_finite(
    window: u32,
    layer: &str,
    field: &str,
    values: Option<&[f64]>,
) -> Result<(), HookError> {
    match values.and_then(|v| v.iter().position(|x| !x.is_finite())) {
        None => Ok(()),
        Some(i) => Err(HookError::NonFinite(format!(
            "window {window} layer {layer}: {field} item {i} is not finite (an overflowing \
             accumulation, or the window's fit batches give NaN at its checkpoint); nothing of \
             this window is written"
        ))),
    }
}

/// `Σ a aᵀ` and `Σ g gᵀ` of a layer's captured inputs `a` and output gradients `g`
/// (`[batch, seq, d]`) over the token rows `rows` (`(indices, count)`; all when `None`), with a
/// column of ones appended to `a` for the bias; and the number of rows summed.
fn second_moments(
    a: Tensor<3>,
    g: Tensor<3>,
    rows: Option<(&Tensor<1, Int>, usize)>,
    bias: bool,
) -> (Tensor<2>, Tensor<2>, usize) {
    let [b, s, d_in] = a.dims();
    let d_out = g.dims()[2];
    let mut a = a.reshape([b * s, d_in]);
    let mut g = g.reshape([b * s, d_out]);
    let n = match rows {
        Some((idx, m)) => {
            a = a.select(0, idx.clone());
            g = g.select(0, idx.clone());
            m
        }
        None => b * s,
    };
    if bias {
        let ones = Tensor::<2>::ones([n, 1], &a.device());
        a = Tensor::cat(vec![a, ones], 1);
    }
    let aa = a.clone().transpose().matmul(a);
    let gg = g.clone().transpose().matmul(g);
    (aa, gg, n)
}

/// The eigenbasis projection the next window's sketches of `spec` use under
/// [`SketchScheme::Eigenbasis`], from the factors `f` of window `window`; `None` for the random
/// scheme.
fn next_basis(
    config: &HookConfig,
    spec: &LayerSpec,
    f: &LayerFactors,
    window: u32,
    device: &Device,
) -> Result<Option<BasisDev>, HookError> {
    let SketchScheme::Eigenbasis { select, max_side } = config.effective_scheme() else {
        return Ok(None);
    };
    let record =
        influence_ekfac::eigen_sketch_basis(f, window, spec.sketch_len(), select, max_side)?;
    Ok(Some(BasisDev::new(record, device)))
}
