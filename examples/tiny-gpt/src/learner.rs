//! The same training with burn-train's `Learner`: the hook lives in the model as a
//! `#[module(skip)]` field; `TrainStep::step` arms and captures, `TrainStep::optimize` ends the
//! step (after the optimizer update, so a window closes at the updated model).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use burn::train::metric::LossMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Learner, SequenceOutput, SupervisedTraining, TrainOutput,
    TrainStep,
};
use influence_core::Sink;
use influence_hook::{FitLabels, FitLoss, Hook};

use crate::data::{LmBatch, LmBatcher, epoch};
use crate::model::Gpt;
use crate::train::{Prepared, TrainConfig, TrainReport};

/// The GPT with the hook attached, as burn-train sees it.
#[derive(Module, Debug)]
pub struct HookedGpt {
    /// The model.
    pub gpt: Gpt,
    #[module(skip)]
    hook: Option<Hook<LmBatch>>,
    #[module(skip)]
    losses: Arc<Mutex<Vec<f32>>>,
}

impl FitLoss<LmBatch> for HookedGpt {
    fn fit_loss(&self, batch: &LmBatch, labels: FitLabels) -> Tensor<1> {
        self.gpt.fit_loss(batch, labels)
    }
}

impl TrainStep for HookedGpt {
    type Input = LmBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<SequenceOutput> {
        if let Some(h) = &self.hook {
            h.arm();
        }
        let logits = self.gpt.forward(&batch);
        let (loss, token_loss) =
            crate::model::loss_from_logits(logits.clone(), &batch, FitLabels::Empirical);
        let mut grads = loss.backward();
        if let Some(h) = &self.hook
            && let Err(e) = h.capture(&mut grads, &batch.step_batch(Some(token_loss)), &batch)
        {
            h.fail(e);
        }
        if let Ok(l) = loss.clone().try_into_scalar::<f32>() {
            self.losses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(l);
        }
        TrainOutput::new(
            self,
            grads,
            SequenceOutput::new(loss.detach(), logits.detach(), None, batch.targets),
        )
    }

    fn optimize(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        let base = lr.base();
        let model = optim.step(lr, self, grads);
        if let Some(h) = &model.hook
            && let Err(e) = h.end_step(base, &model)
        {
            h.fail(e);
        }
        model
    }
}

impl InferenceStep for HookedGpt {
    type Input = LmBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: LmBatch) -> SequenceOutput {
        let logits = self.gpt.forward(&batch);
        let (loss, _) =
            crate::model::loss_from_logits(logits.clone(), &batch, FitLabels::Empirical);
        SequenceOutput::new(loss, logits, None, batch.targets)
    }
}

/// Trains with burn-train's `Learner` for about `config.steps` steps (whole epochs over the
/// packed corpus), the hook attached when `sink` is given.
pub fn train_with_learner(
    config: &TrainConfig,
    prepared: &Prepared,
    device: &Device,
    sink: Option<Box<dyn Sink>>,
    dir: &Path,
) -> Result<TrainReport> {
    let (hook, gpt) = crate::train::init_model(config, prepared, device, sink)?;
    let losses = Arc::new(Mutex::new(Vec::new()));
    let model = HookedGpt {
        gpt,
        hook: hook.clone(),
        losses: losses.clone(),
    };

    let seqs = epoch(&prepared.tokens, config.seq_len, config.seed);
    let n_valid = (seqs.len() / 20).max(config.batch_size).min(seqs.len());
    let valid = seqs[..n_valid].to_vec();
    let per_epoch = seqs.len().div_ceil(config.batch_size);
    let epochs = config.steps.div_ceil(per_epoch).max(1);
    let train_loader = DataLoaderBuilder::new(LmBatcher)
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .build(InMemDataset::new(seqs));
    let valid_loader = DataLoaderBuilder::new(LmBatcher)
        .batch_size(config.batch_size)
        .build(InMemDataset::new(valid));
    let scheduler = CosineAnnealingLrSchedulerConfig::new(config.lr, epochs * per_epoch)
        .with_min_lr(config.lr * 0.1)
        .init()
        .map_err(|e| anyhow!("lr scheduler: {e}"))?;

    let start = Instant::now();
    let result = SupervisedTraining::new(dir.join("learner"), train_loader, valid_loader)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_training_strategy(burn::train::TrainingStrategy::Default(
            ExecutionStrategy::single(device.clone()),
        ))
        .num_epochs(epochs)
        .launch(Learner::new(model, AdamConfig::new().init(), scheduler));
    if let Some(e) = result.error {
        return Err(anyhow!("training failed: {e}"));
    }
    let model = result.model.train();
    if let Some(h) = &hook {
        h.finish(&model)?;
    }
    let losses = losses.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(TrainReport {
        losses,
        model: model.gpt,
        seconds: start.elapsed().as_secs_f64(),
    })
}
