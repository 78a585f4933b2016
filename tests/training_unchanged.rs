//! Attaching the hook does not change training; the loss falls; the hook also runs inside
//! burn-train's `Learner`.

use burn::tensor::Device;
use influence_core::{MemorySink, Sink};
use influence_tests::parameters;
use tiny_gpt::train::{TrainConfig, prepare, train};

/// burn's RNG seed is per device and process-wide: tests that seed and initialise a model must not
/// interleave, or their initialisations differ.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded() -> std::sync::MutexGuard<'static, ()> {
    SEEDED.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.steps = steps;
    c.log_every = 0;
    c
}

#[test]
fn hook_does_not_change_the_loss_curve_or_the_parameters() {
    // 6 steps with windows of 4: one full window closes (with its re-run fit pass) mid-training.
    let _guard = seeded();
    let config = tiny(6);
    let prepared = prepare(&config).expect("prepare");
    let device = Device::flex().autodiff();
    let plain = train(&config, &prepared, &device, None).expect("plain run");
    let sink = MemorySink::new();
    let hooked = train(
        &config,
        &prepared,
        &device,
        Some(Box::new(sink.clone()) as Box<dyn Sink>),
    )
    .expect("hooked run");

    assert_eq!(plain.losses.len(), 6);
    // Adding a zero probe changes no f32 value: the runs agree to rounding (here: exactly).
    for (a, b) in plain.losses.iter().zip(&hooked.losses) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
    }
    let (pa, pb) = (parameters(&plain.model), parameters(&hooked.model));
    assert_eq!(pa.len(), pb.len());
    let max = pa
        .iter()
        .zip(&pb)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max <= 1e-6, "parameters differ by {max}");

    let store = sink.store();
    assert_eq!(
        store.windows.len(),
        2,
        "a full window and the final partial one"
    );
    assert_eq!(store.checkpoints.len(), 2);
    assert_eq!(store.batches.len(), 6);
    assert!(
        store.windows[0]
            .layers
            .iter()
            .all(|l| l.corrected.is_some())
    );
    // The loss recorded per document averages to the batch loss (all rows of step 0).
    let rows = &store.batches[0].rows;
    let tokens: u32 = rows.iter().map(|r| r.tokens).sum();
    let mean: f32 = rows
        .iter()
        .map(|r| r.loss.expect("loss") * r.tokens as f32)
        .sum::<f32>()
        / tokens as f32;
    assert!(
        (mean - plain.losses[0]).abs() < 1e-4,
        "{mean} vs {}",
        plain.losses[0]
    );
}

#[test]
fn loss_falls_on_the_tiny_preset() {
    let _guard = seeded();
    let config = tiny(40);
    let prepared = prepare(&config).expect("prepare");
    let device = Device::flex().autodiff();
    let r = train(&config, &prepared, &device, None).expect("run");
    let first: f32 = r.losses[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = r.losses[35..].iter().sum::<f32>() / 5.0;
    assert!(last < first - 1.0, "loss {first} → {last}");
}

#[test]
fn hook_runs_inside_burn_train_learner() {
    let _guard = seeded();
    let config = tiny(8);
    let prepared = prepare(&config).expect("prepare");
    let device = Device::flex().autodiff();
    let dir = std::env::temp_dir().join(format!("influence-learner-{}", std::process::id()));
    let sink = MemorySink::new();
    let r = tiny_gpt::learner::train_with_learner(
        &config,
        &prepared,
        &device,
        Some(Box::new(sink.clone()) as Box<dyn Sink>),
        &dir,
    )
    .expect("learner run");
    let _ = std::fs::remove_dir_all(&dir);
    let store = sink.store();
    assert!(!r.losses.is_empty());
    assert_eq!(
        store.batches.len(),
        r.losses.len(),
        "one sketch batch per training step"
    );
    assert!(store.rows() > 0);
    assert!(!store.windows.is_empty());
    assert!(store.finished);
    // Learning rates reach the records (cosine schedule: positive, at most the peak).
    assert!(
        store
            .batches
            .iter()
            .all(|b| b.learning_rate > 0.0 && b.learning_rate <= config.lr + 1e-12)
    );
}
