//! `tiny-gpt`: train the example model with the influence hook attached.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Parser, ValueEnum};
use influence_core::MemorySink;
use tiny_gpt::train::{TrainConfig, prepare, train};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Preset {
    /// 2 CPU cores, a few minutes.
    Cpu,
    /// A larger model for a GPU.
    Gpu,
    /// Seconds; for smoke tests.
    Tiny,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Loop {
    /// The hand-written training loop.
    Manual,
    /// burn-train's `Learner` with the hook in `TrainStep`.
    Learner,
}

/// Train the tiny GPT on the generated corpus with the influence hook attached.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Settings preset.
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    /// Override the number of optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Output directory (tokenizer, final model, run summary).
    #[arg(long, default_value = "runs/tiny-gpt")]
    out: PathBuf,
    /// Train without the hook (baseline).
    #[arg(long)]
    no_hook: bool,
    /// Which training loop drives the run.
    #[arg(long = "loop", value_enum, default_value = "manual")]
    train_loop: Loop,
    /// Read the whole configuration from a JSON file (as written to OUT/config.json).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid config", p.display()))?
        }
        None => match args.preset {
            Preset::Cpu => TrainConfig::cpu(),
            Preset::Gpu => TrainConfig::gpu(),
            Preset::Tiny => TrainConfig::tiny(),
        },
    };
    if let Some(s) = args.steps {
        config.steps = s;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    std::fs::write(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;

    let prepared = prepare(&config)?;
    prepared.bpe.save(&args.out.join("tokenizer.json"))?;
    let device = Device::default().autodiff();
    println!(
        "corpus: {} documents, {} tokens, vocab {}; model d={} layers={} ; {} steps of {}×{}",
        prepared.docs.len(),
        prepared
            .tokens
            .iter()
            .map(|t| t.tokens.len())
            .sum::<usize>(),
        prepared.bpe.vocab_size(),
        config.d_model,
        config.n_layers,
        config.steps,
        config.batch_size,
        config.seq_len
    );

    let sink = MemorySink::new();
    let hooked = (!args.no_hook).then(|| Box::new(sink.clone()) as Box<dyn influence_core::Sink>);
    let (losses, model, seconds) = match args.train_loop {
        Loop::Manual => {
            let r = train(&config, &prepared, &device, hooked)?;
            (r.losses, r.model, r.seconds)
        }
        Loop::Learner => {
            let r = tiny_gpt::learner::train_with_learner(
                &config, &prepared, &device, hooked, &args.out,
            )?;
            (r.losses, r.model, r.seconds)
        }
    };

    let n = losses.len();
    let k = (n / 10).max(1);
    let first = losses.iter().take(k).sum::<f32>() / k as f32;
    let last = losses.iter().skip(n.saturating_sub(k)).sum::<f32>() / k.min(n).max(1) as f32;
    println!("loss: first {k} steps {first:.4} → last {k} steps {last:.4} ({seconds:.1} s)");
    model
        .clone()
        .save_file(args.out.join("model.bpk"))
        .map_err(|e| anyhow::anyhow!("saving the model: {e}"))?;

    let store = sink.store();
    let summary = serde_json::json!({
        "losses": losses,
        "seconds": seconds,
        "hook": !args.no_hook,
        "run": store.run,
        "sketch_rows": store.rows(),
        "windows": store.windows.iter().map(|w| serde_json::json!({
            "window": w.window, "first_step": w.first_step, "last_step": w.last_step,
            "layers": w.layers.iter().map(|l| serde_json::json!({
                "name": l.name, "tokens": l.tokens, "corrected_examples": l.corrected_examples,
                "top_eigenvalue_a": l.eig_a.values.last(), "top_eigenvalue_s": l.eig_s.values.last(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "checkpoints": store.checkpoints.iter().map(|(w, b)| serde_json::json!({"window": w, "bytes": b.len()})).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    if let Some(run) = &store.run {
        let bytes_per_doc: usize = run.layers.iter().map(|l| l.sketch_len() * 4).sum();
        println!(
            "hook: {} layers, {} sketch rows ({} B per document at f32), {} windows closed, {} checkpoints",
            run.layers.len(),
            store.rows(),
            bytes_per_doc,
            store.windows.len(),
            store.checkpoints.len()
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
