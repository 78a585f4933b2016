//! The scorer's peak memory on a synthetic store of small shape (2 layers, 4×4 sketches), for
//! `docs/performance.md`. Two modes, each its own process so that the peak RSS of scoring is
//! not the writer's:
//!
//! ```text
//! cargo run --release -p influence-analyzer --example scorer_memory -- write DIR ROWS
//! cargo run --release -p influence-analyzer --example scorer_memory -- score DIR QUERIES SPLIT_K
//! ```
//!
//! `write` stores `ROWS` rows, one per document (one window, 1,024 rows a step, i8 sketches,
//! the default store settings). `score` scores them against `QUERIES` random queries on the
//! CPU, then splits the top and bottom `SPLIT_K` documents of every query by layer (the second
//! pass), and prints one JSON line: rows, documents, the peak RSS (`VmHWM`) after opening the
//! store, after scoring and after splitting, the times, and the bytes the removed
//! `documents × queries × layers` split would have held.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use influence_analyzer::{PreparedQueries, ScoreConfig, layer_splits, score_store};
use influence_core::{
    FORMAT_VERSION, FisherLabels, LayerSpec, LossReduction, ProjectionKind, RunInfo, Sink,
    SketchBatch, SketchRowMeta,
};
use influence_store::{Store, StoreConfig, StoreWriter};
use rand::{Rng, SeedableRng, rngs::StdRng};

const STEP_ROWS: u64 = 1024;

fn run() -> RunInfo {
    let layer = |name: &str| LayerSpec {
        name: name.into(),
        d_in: 16,
        d_out: 16,
        bias: false,
        k_a: 4,
        k_g: 4,
    };
    RunInfo {
        format_version: FORMAT_VERSION,
        layers: vec![layer("mlp.in"), layer("mlp.out")],
        projection_seed: 1,
        projection: ProjectionKind::Rademacher,
        loss_reduction: LossReduction::Sum,
        window_steps: u64::MAX / 2,
        fisher: FisherLabels::Empirical,
        sketch_scheme: Default::default(),
    }
}

/// Peak resident set size of this process so far, in MiB (`VmHWM`, Linux).
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn write(dir: &Path, rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let run = run();
    let mut rng = StdRng::seed_from_u64(1);
    let mut w = StoreWriter::create(dir, StoreConfig::default())?;
    w.begin(&run)?;
    let mut doc = 0u64;
    for step in 0..rows.div_ceil(STEP_ROWS) {
        let n = STEP_ROWS.min(rows - doc) as usize;
        let batch = SketchBatch {
            step,
            window: 0,
            learning_rate: 0.01,
            rows: (0..n as u64)
                .map(|i| SketchRowMeta {
                    doc_id: doc + i,
                    loss: None,
                    tokens: 64,
                    source: ["web", "code", "math"][((doc + i) % 3) as usize].into(),
                })
                .collect(),
            sketches: run
                .layers
                .iter()
                .map(|l| {
                    (0..n * l.sketch_len())
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect()
                })
                .collect(),
            skipped: Vec::new(),
        };
        doc += n as u64;
        w.sketches(batch)?;
    }
    w.finish()?;
    Ok(())
}

fn score(dir: &Path, queries: usize, split_k: usize) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir)?;
    let opened = peak_mib();
    let run = store.run().clone();
    let mut rng = StdRng::seed_from_u64(2);
    let prepared = vec![PreparedQueries {
        window: 0,
        sketches: run
            .layers
            .iter()
            .map(|l| {
                (0..queries * l.sketch_len())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect()
            })
            .collect(),
        preconditioned: Vec::new(),
        nats: vec![1.0; queries],
        damping: vec![0.1; run.layers.len()],
        row_metric: run
            .layers
            .iter()
            .map(|l| vec![1.0; l.sketch_len()])
            .collect(),
    }];
    let config = ScoreConfig::default().top_k(split_k);
    let device = Device::flex();
    let t = Instant::now();
    let scores = score_store(&store, &prepared, &config, &device, &mut |_| {})?;
    let score_s = t.elapsed().as_secs_f64();
    let scored = peak_mib();
    let pairs: Vec<(usize, usize)> = (0..queries)
        .flat_map(|q| {
            scores
                .top(q, split_k)
                .into_iter()
                .chain(scores.bottom(q, split_k))
                .map(move |d| (d, q))
        })
        .collect();
    let t = Instant::now();
    let splits = layer_splits(&store, &prepared, &config, &device, &scores, &pairs)?;
    let split_s = t.elapsed().as_secs_f64();
    let docs = scores.docs.len();
    let old_split_mib = (docs * queries * run.layers.len() * 8) as f64 / (1 << 20) as f64;
    println!(
        "{}",
        serde_json::json!({
            "rows": scores.stats.rows,
            "documents": docs,
            "queries": queries,
            "layers": run.layers.len(),
            "split_pairs": splits.len(),
            "peak_mib_opened": opened,
            "peak_mib_scored": scored,
            "peak_mib_split": peak_mib(),
            "accumulators_mib": (docs * queries * 2 * 8) as f64 / (1 << 20) as f64,
            "removed_split_mib": old_split_mib,
            "score_seconds": score_s,
            "split_seconds": split_s,
        })
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, what: &str| -> Result<String, Box<dyn std::error::Error>> {
        args.get(i)
            .cloned()
            .ok_or_else(|| format!("missing argument {what}").into())
    };
    match arg(0, "MODE (write or score)")?.as_str() {
        "write" => write(Path::new(&arg(1, "DIR")?), arg(2, "ROWS")?.parse()?),
        "score" => score(
            Path::new(&arg(1, "DIR")?),
            arg(2, "QUERIES")?.parse()?,
            arg(3, "SPLIT_K")?.parse()?,
        ),
        other => Err(format!("unknown mode {other:?}: write or score").into()),
    }
}
