//! Gradients outside training: per-document gradients and token-wise scores from one
//! forward/backward pass of a model built with a [`Probe`]'s tap.
//!
//! The analyzer uses it for query gradients (`G_q = Σ_{t∈q} g_t a_tᵀ` of the measurement) and to
//! split a document's score over its tokens (`g_tᵀ M a_t` for a preconditioned query gradient
//! `M`). It shares the hook's probe trick and kernels; nothing is written anywhere.

use burn::tensor::{Device, Gradients, Tensor, TensorData};
use influence_core::LayerSpec;

use crate::hook::{StepBatch, gradients, read};
use crate::kernels::Segments;
use crate::tap::Tap;
use crate::{HookConfig, HookError};

/// Captures layer inputs and output gradients of the tracked layers of one pass.
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use influence_hook::{DocRef, Probe, StepBatch, TrackedLinear};
///
/// let device = Device::flex().autodiff();
/// let probe = Probe::new(&["proj".to_string()]);
/// let layer = TrackedLinear::new(LinearConfig::new(3, 2).init(&device), "proj", &probe.tap());
/// let x = Tensor::<3>::ones([1, 4, 3], &device);
/// probe.arm();
/// let mut grads = layer.forward(x).sum().backward();
/// let batch = StepBatch {
///     batch_size: 1, seq_len: 4, doc_index: vec![0; 4],
///     docs: vec![DocRef { id: 0, source: "q".into() }], loss_tokens: None, token_loss: None,
///     loss_multiplier: None,
/// };
/// let g = probe.document_gradients(&mut grads, &batch, 1.0).expect("gradients");
/// // d(sum)/dW for 4 tokens of ones: every entry 4 (bias column included).
/// assert_eq!(g.grads[0], vec![4.0; 2 * 4]);
/// ```
#[derive(Clone, Debug)]
pub struct Probe {
    tap: Tap,
}

/// Per-document gradients of every tracked layer.
#[derive(Clone, Debug)]
pub struct DocumentGradients {
    /// For each row: index into the batch's `docs`.
    pub docs: Vec<usize>,
    /// Positions of each row's document (the tokens its gradient sums over).
    pub tokens: Vec<u32>,
    /// Tracked layers, in registration order.
    pub layers: Vec<LayerSpec>,
    /// Per layer: `rows × d_out × d_in_aug`, row-major (`G_n = Σ_t g_t [a_t, 1]ᵀ`).
    pub grads: Vec<Vec<f32>>,
}

impl Probe {
    /// A probe tracking the [`crate::TrackedLinear`]s named in `layers` (all of them when empty).
    pub fn new(layers: &[String]) -> Self {
        let config = HookConfig {
            include: layers.to_vec(),
            ..HookConfig::default()
        };
        Self {
            tap: Tap::new(config),
        }
    }

    /// The tap to build the model with.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// The tracked layers registered so far.
    pub fn layers(&self) -> Vec<LayerSpec> {
        self.tap
            .state()
            .map(|s| s.layers.clone())
            .unwrap_or_default()
    }

    /// Arms the tracked layers for the next forward pass.
    pub fn arm(&self) {
        self.tap.arm();
    }

    /// Per tracked layer, every call of the armed pass: `(input [b, s, d_in_aug], g [b, s, d_out])`.
    fn captured(&self, grads: &mut Gradients, scale: f32) -> Result<Captures, HookError> {
        let captures = self.tap.take();
        if captures.is_empty() {
            return Err(HookError::Order(
                "no tracked layer ran since arm(): call probe.arm() before the forward pass".into(),
            ));
        }
        let layers = self.layers();
        let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
        let mut calls: Vec<Vec<(Tensor<3>, Tensor<3>)>> = vec![Vec::new(); layers.len()];
        for (layer, a, g) in gradients(captures, grads, &names, scale)? {
            let a = augment(a, layers[layer].bias);
            calls[layer].push((a, g));
        }
        for (spec, c) in layers.iter().zip(&calls) {
            if c.is_empty() {
                return Err(HookError::NoGradient(spec.name.clone()));
            }
        }
        let device = calls
            .iter()
            .flatten()
            .map(|(a, _)| a.device())
            .next()
            .ok_or_else(|| HookError::Order("no tracked layer ran".into()))?;
        Ok(Captures {
            layers,
            calls,
            device,
        })
    }

    /// After `loss.backward()` of an armed forward pass: the gradient of every document of
    /// `batch` for every tracked layer, `G_n = scale · Σ_{t∈n} g_t [a_t, 1]ᵀ`. Use `scale` to undo
    /// the loss's reduction (1 for a summed loss). The probes' gradients are removed from
    /// `grads`; parameter gradients stay.
    pub fn document_gradients(
        &self,
        grads: &mut Gradients,
        batch: &StepBatch,
        scale: f32,
    ) -> Result<DocumentGradients, HookError> {
        let Captures {
            layers,
            calls,
            device,
        } = self.captured(grads, scale)?;
        let segs = Segments::new(batch, &device)?;
        let mut out = Vec::with_capacity(layers.len());
        for (spec, calls) in layers.iter().zip(calls) {
            let mut sum: Option<Tensor<2>> = None;
            for (a, g) in calls {
                check_positions(spec, &a, batch)?;
                let k = segs.outer(g, a);
                sum = Some(match sum.take() {
                    Some(t) => t + k,
                    None => k,
                });
            }
            let sum = sum.ok_or_else(|| HookError::NoGradient(spec.name.clone()))?;
            out.push(read(sum, &spec.name)?);
        }
        Ok(DocumentGradients {
            docs: segs.docs,
            tokens: segs.tokens,
            layers,
            grads: out,
        })
    }

    /// After `loss.backward()` of an armed forward pass: for each of `m` matrices per layer
    /// (`matrices[l]` holds `m × d_out × d_in_aug` values, row-major), the score of every position
    /// `Σ_l scale · g_tᵀ M_l [a_t, 1]`; returned as `m × (batch × seq)` values, zero on padding.
    pub fn token_scores(
        &self,
        grads: &mut Gradients,
        batch: &StepBatch,
        scale: f32,
        matrices: &[Vec<f32>],
    ) -> Result<Vec<f32>, HookError> {
        let Captures {
            layers,
            calls,
            device,
        } = self.captured(grads, scale)?;
        if matrices.len() != layers.len() {
            return Err(HookError::Batch(format!(
                "{} matrices for {} tracked layers",
                matrices.len(),
                layers.len()
            )));
        }
        let positions = batch.batch_size * batch.seq_len;
        let m = layers
            .first()
            .map_or(0, |l| matrices[0].len() / (l.d_out * l.d_in_aug()).max(1));
        let mut total: Option<Tensor<2>> = None;
        for ((spec, calls), mats) in layers.iter().zip(calls).zip(matrices) {
            let (d_out, d_in) = (spec.d_out, spec.d_in_aug());
            if mats.len() != m * d_out * d_in {
                return Err(HookError::Batch(format!(
                    "layer {}: {} matrix values, expected {m} matrices of {d_out}×{d_in}",
                    spec.name,
                    mats.len(),
                )));
            }
            // [m, d_out, d_in] → [d_out, m·d_in]: one matmul for all matrices.
            let mt =
                Tensor::<3>::from_data(TensorData::new(mats.clone(), [m, d_out, d_in]), &device)
                    .swap_dims(0, 1)
                    .reshape([d_out, m * d_in]);
            for (a, g) in calls {
                check_positions(spec, &a, batch)?;
                let a = a.reshape([positions, d_in]);
                let gm = g.reshape([positions, d_out]).matmul(mt.clone());
                let gm = gm.reshape([positions, m, d_in]);
                let s = (gm * a.unsqueeze_dim::<3>(1))
                    .sum_dim(2)
                    .reshape([positions, m]);
                total = Some(match total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
        let total = total.ok_or_else(|| HookError::Order("no tracked layer".into()))?;
        let mask: Vec<f32> = batch
            .doc_index
            .iter()
            .map(|&d| if d >= 0 { 1.0 } else { 0.0 })
            .collect();
        if mask.len() != positions {
            return Err(HookError::Batch(format!(
                "doc_index has {} entries, batch_size × seq_len is {positions}",
                mask.len()
            )));
        }
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [positions, 1]), &device);
        read((total * mask).transpose(), "token scores")
    }
}

/// What one armed pass captured.
struct Captures {
    layers: Vec<LayerSpec>,
    calls: Vec<Vec<(Tensor<3>, Tensor<3>)>>,
    device: Device,
}

fn check_positions(spec: &LayerSpec, a: &Tensor<3>, batch: &StepBatch) -> Result<(), HookError> {
    let [b, s, _] = a.dims();
    if (b, s) != (batch.batch_size, batch.seq_len) {
        return Err(HookError::Batch(format!(
            "layer {} ran on [{b}, {s}] positions, the batch is {}×{}",
            spec.name, batch.batch_size, batch.seq_len
        )));
    }
    Ok(())
}

/// `[x, 1]` when the layer has a bias.
fn augment(x: Tensor<3>, bias: bool) -> Tensor<3> {
    if bias {
        let [b, s, _] = x.dims();
        let ones = Tensor::<3>::ones([b, s, 1], &x.device());
        Tensor::cat(vec![x, ones], 2)
    } else {
        x
    }
}
