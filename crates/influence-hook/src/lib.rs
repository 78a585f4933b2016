//! Training-time capture for burn: EK-FAC factors and per-document gradient sketches from the
//! training step's own backward pass.
//!
//! Attach in three places of a training step:
//! 1. build the model's Linear layers as [`TrackedLinear`]s with the hook's [`Tap`];
//! 2. [`Hook::arm`] before the forward pass, [`Hook::capture`] right after `loss.backward()`;
//! 3. [`Hook::end_step`] after the optimizer step, with the learning rate and the updated model.
//!
//! For each tracked layer and each document `n` of the batch it computes the sketch
//! `K_n = Σ_{t∈n} (P_gᵀ g_t)(P_aᵀ a_t)ᵀ` (a batched matmul on the training device; the per-example
//! `d_out × d_in` gradient is never formed) — by default with `P_g`, `P_a` eigenvectors of the
//! previous window's factors, keeping the `k_g·k_a` coordinates of largest corrected eigenvalue
//! ([`influence_core::SketchScheme::Eigenbasis`]; the first window fits its basis on its first
//! batch), or with seeded random projections (`SketchScheme::Random`) — accumulates `A = Σ a aᵀ/N`, `S = Σ g gᵀ/N` on factor
//! steps, and every `window_steps` steps closes a window: checkpoint, factors, eigenbases and the
//! corrected eigenvalues `Λ = mean_n (Q_Sᵀ G_n Q_A)²` from a reservoir of the window's batches
//! re-run at the checkpoint.
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::module::Module;
//! use burn::tensor::{Device, Tensor};
//! use influence_core::{LossReduction, MemorySink};
//! use influence_hook::{DocRef, FitLabels, FitLoss, Hook, HookConfig, StepBatch, TrackedLinear};
//!
//! #[derive(Module, Debug)]
//! struct Model { proj: TrackedLinear }
//! impl FitLoss<Tensor<3>> for Model {
//!     fn fit_loss(&self, x: &Tensor<3>, _labels: FitLabels) -> Tensor<1> {
//!         self.proj.forward(x.clone()).powf_scalar(2.0).sum()
//!     }
//! }
//!
//! let device = Device::flex().autodiff();
//! let sink = MemorySink::new();
//! let config = HookConfig::default().loss_reduction(LossReduction::Sum).window_steps(2).k_a(2).k_g(2);
//! let hook = Hook::<Tensor<3>>::new(config, sink.clone()).expect("valid config");
//! let model = Model { proj: TrackedLinear::new(LinearConfig::new(3, 2).init(&device), "proj", &hook.tap()) };
//!
//! let x = Tensor::<3>::ones([1, 4, 3], &device); // one sequence, one document of 4 tokens
//! let batch = StepBatch {
//!     batch_size: 1, seq_len: 4, doc_index: vec![0; 4],
//!     docs: vec![DocRef { id: 7, source: "demo".into() }],
//!     loss_tokens: None, token_loss: None, loss_multiplier: None,
//! };
//! for _ in 0..2 {
//!     hook.arm();
//!     let mut grads = model.fit_loss(&x, FitLabels::Empirical).backward();
//!     hook.capture(&mut grads, &batch, &x).expect("captured");
//!     // ... optimizer step with GradientsParams::from_grads(grads, &model) ...
//!     hook.end_step(1e-3, &model).expect("step");
//! }
//! hook.finish(&model).expect("finished");
//! let store = sink.store();
//! assert_eq!(store.rows(), 2);                 // one document per step
//! assert_eq!(store.windows.len(), 1);          // window_steps = 2
//! assert_eq!(store.batches[0].sketches[0].len(), 2 * 2);
//! ```

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Bool, Device, Int, Tensor};

mod config;
mod hook;
mod kernels;
mod probe;
mod tap;

pub use config::{HookConfig, NonFinitePolicy, SketchSize};
pub use hook::{DocRef, FitLabels, FitLoss, Hook, StepBatch};
pub use probe::{DocumentGradients, Probe};
pub use tap::{LayerTap, Tap, TrackedLinear};

/// Builds a module with `device` seeded to `seed`, holding a process-wide lock while every
/// parameter is drawn.
///
/// burn's seed is one random generator per backend and process, and parameters are initialised
/// lazily, on first use: two threads that seed and build models at the same time draw from each
/// other's stream, and neither gets the initialisation its seed promises (tests run in parallel
/// threads; so do parallel retraining runs). `seeded` seeds, builds and then touches every
/// parameter inside the lock, so the module depends on `seed` alone, as long as every other
/// initialisation in the process goes through [`seeded`] or [`unseeded`].
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let a = influence_hook::seeded(&device, 7, || LinearConfig::new(3, 2).init(&device));
/// let b = influence_hook::seeded(&device, 7, || LinearConfig::new(3, 2).init(&device));
/// assert_eq!(a.weight.val().into_data(), b.weight.val().into_data());
/// ```
pub fn seeded<M: Module>(device: &Device, seed: u64, init: impl FnOnce() -> M) -> M {
    let _guard = init_lock();
    device.seed(seed);
    materialized(init())
}

/// Builds a module under [`seeded`]'s lock without seeding: for a model built only to load a
/// checkpoint into, whose random draws must not land inside another thread's seeded
/// initialisation.
pub fn unseeded<M: Module>(init: impl FnOnce() -> M) -> M {
    let _guard = init_lock();
    materialized(init())
}

fn init_lock() -> std::sync::MutexGuard<'static, ()> {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A panic inside another initialisation poisons the lock but leaves nothing half-done that
    // matters here: the next caller re-seeds.
    INIT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Draws every lazily initialised parameter of `module` now.
fn materialized<M: Module>(module: M) -> M {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.base();
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
            let _ = param.base();
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
            let _ = param.base();
        }
    }
    module.visit(&mut Touch);
    module
}

/// Errors of the hook; each names the layer, field or call at fault.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// An invalid configuration value.
    #[error("hook config: {0}")]
    Config(String),
    /// A [`StepBatch`] inconsistent with the captured tensors.
    #[error("step batch: {0}")]
    Batch(String),
    /// NaN or ∞ in captured values, under `non_finite = fail` or past the skip policy's limits.
    #[error("non-finite values: {0}")]
    NonFinite(String),
    /// A tracked layer ran but its probe received no gradient (its output did not reach the loss).
    #[error("layer {0}: captured but no gradient reached it (is it part of the loss?)")]
    NoGradient(String),
    /// Calls in the wrong order.
    #[error("hook call order: {0}")]
    Order(String),
    /// Reading a tensor back from the device failed.
    #[error("tensor: {0}")]
    Tensor(String),
    /// Serialising the checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The sink failed.
    #[error("sink: {0}")]
    Sink(#[from] influence_core::SinkError),
    /// The factor math failed.
    #[error("ekfac: {0}")]
    Ekfac(#[from] influence_ekfac::EkfacError),
    /// An earlier call failed; the hook stays failed.
    #[error("the hook failed earlier: {0}")]
    Failed(String),
}
