//! Tracked Linear layers and the tap they report to.
//!
//! A [`TrackedLinear`] is an `nn::Linear` with a name. While the hook is armed, its forward adds a
//! zero leaf tensor that requires a gradient (a *probe*) to the layer output and records the layer
//! input; after the training step's own `backward()`, the probe's gradient is exactly
//! `g_t = ∂L/∂s_t`. Adding zero changes no value and passes gradients through unchanged, so
//! training is unaffected.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use influence_core::LayerSpec;

use crate::HookConfig;

/// One recorded call of a tracked layer.
#[derive(Debug)]
pub(crate) struct Captured {
    pub layer: usize,
    /// Layer input `[b, s, d_in]`, without autodiff.
    pub input: Tensor<3>,
    /// The probe leaf `[b, s, d_out]` added to the output.
    pub probe: Tensor<3>,
}

#[derive(Debug, Default)]
pub(crate) struct TapState {
    pub layers: Vec<LayerSpec>,
    /// Set once the run info has gone to the sink: the layer list is then fixed.
    pub frozen: bool,
    pub armed: bool,
    pub captures: Vec<Captured>,
}

#[derive(Debug)]
struct TapShared {
    config: HookConfig,
    state: Mutex<TapState>,
}

/// The handle tracked layers report to. Cheap to clone; clones share state. A default (detached)
/// tap tracks nothing, so the same model code runs with and without a hook.
#[derive(Clone, Debug, Default)]
pub struct Tap {
    shared: Option<Arc<TapShared>>,
}

impl Tap {
    pub(crate) fn new(config: HookConfig) -> Self {
        Self {
            shared: Some(Arc::new(TapShared {
                config,
                state: Mutex::new(TapState::default()),
            })),
        }
    }

    /// A tap that tracks nothing (the model then runs exactly as a plain one).
    pub fn detached() -> Self {
        Self::default()
    }

    pub(crate) fn state(&self) -> Option<MutexGuard<'_, TapState>> {
        self.shared
            .as_ref()
            .map(|s| s.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Arms the tracked layers and drops any stale captures.
    pub(crate) fn arm(&self) {
        if let Some(mut t) = self.state() {
            t.armed = true;
            t.captures.clear();
        }
    }

    /// Disarms and returns what the armed forward pass captured.
    pub(crate) fn take(&self) -> Vec<Captured> {
        match self.state() {
            Some(mut t) => {
                t.armed = false;
                std::mem::take(&mut t.captures)
            }
            None => Vec::new(),
        }
    }

    /// Registers a layer; returns its index when the configuration selects it. Registering the
    /// same name twice (e.g. a model rebuilt to load a checkpoint) returns the first index if the
    /// shapes agree.
    pub fn register(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Option<usize> {
        let shared = self.shared.as_ref()?;
        if !shared.config.selects(name) {
            return None;
        }
        let (mut k_a, mut k_g) = shared.config.sketch_size(name);
        if shared.config.projection == influence_core::ProjectionKind::Identity {
            (k_a, k_g) = (d_in + usize::from(bias), d_out);
        } else if matches!(
            shared.config.effective_scheme(),
            influence_core::SketchScheme::Eigenbasis { .. }
        ) {
            // Eigenbasis coordinates: a layer holds at most d_out × d_in_aug of them.
            (k_a, k_g) = (k_a.min(d_in + usize::from(bias)), k_g.min(d_out));
        }
        let spec = LayerSpec {
            name: name.to_string(),
            d_in,
            d_out,
            bias,
            k_a,
            k_g,
        };
        let mut state = self.state()?;
        if let Some(i) = state.layers.iter().position(|l| l.name == name) {
            if state.layers[i] == spec {
                return Some(i);
            }
            tracing::warn!(
                layer = name,
                "registered twice with different shapes: not tracked"
            );
            return None;
        }
        if state.frozen {
            tracing::warn!(
                layer = name,
                "registered after the run started: not tracked (build the model before the first step)"
            );
            return None;
        }
        state.layers.push(spec);
        Some(state.layers.len() - 1)
    }

    /// Names of the registered (tracked) layers, in order.
    pub fn layer_names(&self) -> Vec<String> {
        self.state()
            .map(|s| s.layers.iter().map(|l| l.name.clone()).collect())
            .unwrap_or_default()
    }

    fn probe(&self, layer: usize, input: &Tensor<3>, output: &Tensor<3>) -> Option<Tensor<3>> {
        let mut state = self.state()?;
        if !state.armed || !output.is_autodiff() {
            return None;
        }
        let probe = Tensor::<3>::zeros(output.dims(), &output.device()).require_grad();
        state.captures.push(Captured {
            layer,
            input: input.clone().inner(),
            probe: probe.clone(),
        });
        Some(probe)
    }
}

/// Where a tracked layer reports: the tap and its index there (none when not selected).
#[derive(Clone, Debug, Default)]
pub struct LayerTap {
    tap: Tap,
    index: Option<usize>,
    name: String,
}

/// An `nn::Linear` whose inputs and output gradients the hook can capture.
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use influence_hook::{Tap, TrackedLinear};
///
/// let device = Device::flex();
/// let layer = TrackedLinear::new(LinearConfig::new(4, 3).init(&device), "proj", &Tap::detached());
/// let y = layer.forward(Tensor::<3>::ones([2, 5, 4], &device));
/// assert_eq!(y.dims(), [2, 5, 3]);
/// ```
#[derive(Module, Debug)]
pub struct TrackedLinear {
    /// The wrapped layer (its record is that of a plain `Linear`).
    pub linear: Linear,
    #[module(skip)]
    tap: LayerTap,
}

impl TrackedLinear {
    /// Wraps `linear` under the path `name`, registering it with `tap`.
    pub fn new(linear: Linear, name: &str, tap: &Tap) -> Self {
        let [d_in, d_out] = linear.weight.dims();
        let index = tap.register(name, d_in, d_out, linear.bias.is_some());
        Self {
            linear,
            tap: LayerTap {
                tap: tap.clone(),
                index,
                name: name.to_string(),
            },
        }
    }

    /// The layer's path.
    pub fn name(&self) -> &str {
        &self.tap.name
    }

    /// Whether the hook tracks this layer.
    pub fn is_tracked(&self) -> bool {
        self.tap.index.is_some()
    }

    /// `x W + b` on `[batch, seq, d_in]`, recording the input and adding a probe when armed.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = self.linear.forward(x.clone());
        match self.tap.index {
            Some(i) => match self.tap.tap.probe(i, &x, &y) {
                Some(probe) => y + probe,
                None => y,
            },
            None => y,
        }
    }
}
