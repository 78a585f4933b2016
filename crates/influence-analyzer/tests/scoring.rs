//! The streaming scorer against a brute-force host computation (f64 dot products, row by row),
//! on a synthetic store with several windows, many small shards, documents repeated across steps
//! and two layers of different sketch sizes; and, with feature `wgpu`, the GPU path against the
//! CPU result.
//!
//! Tolerance: 1e-5 of the largest |score| per query. Scores are f32 matmuls of f32 sketches
//! (a few hundred products per row) accumulated in f64 over a document's rows; f32 rounding is
//! ~1e-7 relative per product, so 1e-5 is loose for rounding and tight for any wrong pairing of
//! rows, windows, layers or queries (which move scores by O(1)).

use burn::tensor::Device;
use influence_analyzer::{PreparedQueries, ScoreConfig, Scores, layer_splits, score_store};
use influence_core::{
    FORMAT_VERSION, FisherLabels, LayerSpec, LossReduction, ProjectionKind, RunInfo, Sink,
    SketchBatch, SketchRowMeta,
};
use influence_store::{SketchDtype, Store, StoreConfig, StoreWriter};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

const QUERIES: usize = 3;
const WINDOW_STEPS: u64 = 10;

fn run() -> RunInfo {
    let layer = |name: &str, k_a, k_g| LayerSpec {
        name: name.into(),
        d_in: 8,
        d_out: 8,
        bias: true,
        k_a,
        k_g,
    };
    RunInfo {
        format_version: FORMAT_VERSION,
        layers: vec![layer("a", 4, 3), layer("b", 6, 5)],
        projection_seed: 1,
        projection: ProjectionKind::Rademacher,
        loss_reduction: LossReduction::Sum,
        window_steps: WINDOW_STEPS,
        fisher: FisherLabels::Empirical,
        sketch_scheme: Default::default(),
    }
}

/// A store of 30 steps (3 windows) with 1–6 documents per step drawn from 40 ids.
fn store(dir: &std::path::Path) -> (Store, Vec<SketchBatch>) {
    store_with(dir, |_| {})
}

/// [`store`], each batch passed through `edit` before it is written (and returned).
fn store_with(dir: &std::path::Path, edit: impl Fn(&mut SketchBatch)) -> (Store, Vec<SketchBatch>) {
    let mut w = StoreWriter::create(dir, store_config()).expect("create");
    w.begin(&run()).expect("begin");
    let mut batches = synthetic_batches(30);
    for b in &mut batches {
        edit(b);
        w.sketches(b.clone()).expect("sketches");
    }
    w.finish().expect("finish");
    (Store::open(dir).expect("open"), batches)
}

/// f32 sketches, small record batches and shards (many of them).
fn store_config() -> StoreConfig {
    StoreConfig {
        dtype: SketchDtype::F32,
        batch_rows: 8,
        shard_rows: 16,
        ..StoreConfig::default()
    }
}

/// `steps` steps with 1–6 documents each drawn from 40 ids, random sketches (seeded).
fn synthetic_batches(steps: u64) -> Vec<SketchBatch> {
    let run = run();
    let mut rng = StdRng::seed_from_u64(7);
    (0..steps)
        .map(|step| {
            let rows = rng.random_range(1..7usize);
            let mut ids: Vec<u64> = (0..40).collect();
            ids.shuffle(&mut rng);
            SketchBatch {
                step,
                window: (step / WINDOW_STEPS) as u32,
                learning_rate: 0.01 / (1.0 + step as f64),
                rows: ids[..rows]
                    .iter()
                    .map(|&id| SketchRowMeta {
                        doc_id: id,
                        loss: None,
                        tokens: 10,
                        source: ["x", "y"][(id % 2) as usize].into(),
                    })
                    .collect(),
                sketches: run
                    .layers
                    .iter()
                    .map(|l| {
                        (0..rows * l.sketch_len())
                            .map(|_| rng.random_range(-1.0..1.0))
                            .collect()
                    })
                    .collect(),
                skipped: Vec::new(),
            }
        })
        .collect()
}

fn prepared() -> Vec<PreparedQueries> {
    prepared_windows(3)
}

/// Random prepared queries for windows `0..windows`.
fn prepared_windows(windows: u32) -> Vec<PreparedQueries> {
    let run = run();
    let mut rng = StdRng::seed_from_u64(9);
    (0..windows)
        .map(|window| PreparedQueries {
            window,
            sketches: run
                .layers
                .iter()
                .map(|l| {
                    (0..QUERIES * l.sketch_len())
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect()
                })
                .collect(),
            preconditioned: Vec::new(),
            // Different per window and query, so that influence per nat is not a rescaling.
            nats: (0..QUERIES)
                .map(|q| 0.5 + f64::from(window) + 0.25 * q as f64)
                .collect(),
            damping: vec![0.1; 2],
            row_metric: run
                .layers
                .iter()
                .map(|l| {
                    (0..l.sketch_len())
                        .map(|_| rng.random_range(0.1..2.0))
                        .collect()
                })
                .collect(),
        })
        .collect()
}

/// Brute force: per document id, per query, per layer; with `normalize`, each row divided by
/// its norm in the window's row metric (over all layers).
fn reference(
    batches: &[SketchBatch],
    prepared: &[PreparedQueries],
    lr: bool,
    normalize: bool,
) -> std::collections::BTreeMap<u64, Vec<Vec<f64>>> {
    let run = run();
    let mut out = std::collections::BTreeMap::new();
    for b in batches {
        let p = &prepared[b.window as usize];
        for (r, row) in b.rows.iter().enumerate() {
            let mut norm2 = 0.0f64;
            for (l, spec) in run.layers.iter().enumerate() {
                let n = spec.sketch_len();
                let k = &b.sketches[l][r * n..(r + 1) * n];
                norm2 += k
                    .iter()
                    .zip(&p.row_metric[l])
                    .map(|(v, m)| f64::from(*m) * f64::from(*v).powi(2))
                    .sum::<f64>();
            }
            let scale = if normalize { 1.0 / norm2.sqrt() } else { 1.0 };
            let e = out
                .entry(row.doc_id)
                .or_insert_with(|| vec![vec![0.0; 2]; QUERIES]);
            for (l, spec) in run.layers.iter().enumerate() {
                let n = spec.sketch_len();
                let k = &b.sketches[l][r * n..(r + 1) * n];
                for (q, e) in e.iter_mut().enumerate() {
                    let qs = &p.sketches[l][q * n..(q + 1) * n];
                    let dot: f64 = k
                        .iter()
                        .zip(qs)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum();
                    e[l] += scale * if lr { b.learning_rate * dot } else { dot };
                }
            }
        }
    }
    out
}

/// The scores' per-layer splits of every (document, query) pair, by the second pass.
fn with_all_splits(
    mut s: Scores,
    store: &Store,
    prepared: &[PreparedQueries],
    config: &ScoreConfig,
    device: &Device,
) -> Scores {
    assert!(
        s.splits.is_empty(),
        "the scoring pass keeps no per-layer split"
    );
    assert_eq!(s.layer_scores(0, 0), None);
    let pairs: Vec<(usize, usize)> = (0..s.docs.len())
        .flat_map(|d| (0..QUERIES).map(move |q| (d, q)))
        .collect();
    let splits = layer_splits(store, prepared, config, device, &s, &pairs).expect("splits");
    assert_eq!(splits.len(), pairs.len());
    s.splits = splits;
    s
}

/// Scores, splits of every pair and layer totals against the brute force `want` (per document
/// id, per query, per layer).
fn check(s: &Scores, want: &std::collections::BTreeMap<u64, Vec<Vec<f64>>>) {
    assert_eq!(s.docs.len(), want.len(), "every document once");
    for q in 0..QUERIES {
        let scale = want
            .values()
            .fold(0.0f64, |m, v| m.max(v[q].iter().sum::<f64>().abs()));
        for (d, doc) in s.docs.iter().enumerate() {
            let w = &want[&doc.id][q];
            let total: f64 = w.iter().sum();
            assert!(
                (s.score(d, q) - total).abs() < 1e-5 * scale,
                "doc {} query {q}",
                doc.id
            );
            for (got, w) in s.layer_scores(d, q).expect("split").iter().zip(w) {
                assert!(
                    (got - w).abs() < 1e-5 * scale,
                    "doc {} query {q} layer split",
                    doc.id
                );
            }
        }
        // The whole store's per-layer totals.
        for (l, got) in s.layer_total(q).iter().enumerate() {
            let w: f64 = want.values().map(|v| v[q][l]).sum();
            assert!(
                (got - w).abs() < 1e-5 * scale * want.len() as f64,
                "query {q} layer {l} total: {got}, want {w}"
            );
        }
        // The top and bottom lists are the reference's order.
        let mut order: Vec<(u64, f64)> = want
            .iter()
            .map(|(id, v)| (*id, v[q].iter().sum()))
            .collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<u64> = s.top(q, 5).into_iter().map(|d| s.docs[d].id).collect();
        assert_eq!(top, order[..5].iter().map(|x| x.0).collect::<Vec<_>>());
        let bottom: Vec<u64> = s.bottom(q, 3).into_iter().map(|d| s.docs[d].id).collect();
        assert_eq!(
            bottom,
            order.iter().rev().take(3).map(|x| x.0).collect::<Vec<_>>()
        );
    }
}

/// Influence per nat: each window's part of the score divided by that window's nats, summed.
fn check_per_nat(
    s: &Scores,
    batches: &[SketchBatch],
    prepared: &[PreparedQueries],
    lr: bool,
    normalize: bool,
) {
    let mut want: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for p in prepared {
        let mine: Vec<SketchBatch> = batches
            .iter()
            .filter(|b| b.window == p.window)
            .cloned()
            .collect();
        for (id, per_query) in reference(&mine, prepared, lr, normalize) {
            let e = want.entry(id).or_insert_with(|| vec![0.0; QUERIES]);
            for (q, layers) in per_query.iter().enumerate() {
                e[q] += layers.iter().sum::<f64>() / p.nats[q];
            }
        }
    }
    let mut differs = false;
    for q in 0..QUERIES {
        let scale = want.values().fold(0.0f64, |m, v| m.max(v[q].abs()));
        for (d, doc) in s.docs.iter().enumerate() {
            let w = want[&doc.id][q];
            let got = s.score_per_nat(d, q);
            assert!(
                (got - w).abs() < 1e-5 * scale,
                "doc {} query {q}: per nat {got}, want {w}",
                doc.id
            );
            // Dividing the sum by the last window's nats (the old definition) gives otherwise.
            let last = s.score(d, q) / prepared[prepared.len() - 1].nats[q];
            differs |= (last - w).abs() > 1e-3 * scale;
        }
        assert_eq!(s.per_nat_column(q).len(), s.docs.len());
    }
    assert!(
        differs,
        "the per-nat check cannot tell the definitions apart"
    );
}

#[test]
fn scorer_equals_brute_force_on_every_window_and_layer() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, batches) = store(dir.path());
    assert!(store.manifest().shards.len() >= 6, "many shards");
    let prepared = prepared();
    let device = Device::flex();
    for (lr, normalize) in [(false, false), (true, false), (false, true), (true, true)] {
        let config = ScoreConfig::default().lr_weighting(lr).normalize(normalize);
        let s = score_store(&store, &prepared, &config, &device, &mut |_| {}).expect("score");
        assert_eq!(
            s.stats.rows,
            batches.iter().map(|b| b.rows.len() as u64).sum::<u64>()
        );
        let s = with_all_splits(s, &store, &prepared, &config, &device);
        check(&s, &reference(&batches, &prepared, lr, normalize));
        check_per_nat(&s, &batches, &prepared, lr, normalize);
    }
    // A query whose nats are not finite and positive cannot be scored per nat: an error naming
    // the window and the query.
    let mut bad = prepared.clone();
    bad[1].nats[2] = 0.0;
    let e = score_store(&store, &bad, &ScoreConfig::default(), &device, &mut |_| {})
        .expect_err("zero nats");
    assert!(e.to_string().contains("window 1: query #2"), "{e}");
    // Normalising (the default) changes the scores (the test would pass vacuously otherwise).
    let plain = score_store(
        &store,
        &prepared,
        &ScoreConfig::default().normalize(false),
        &device,
        &mut |_| {},
    )
    .expect("plain");
    let unit = score_store(
        &store,
        &prepared,
        &ScoreConfig::default(),
        &device,
        &mut |_| {},
    )
    .expect("normalized");
    assert!(
        plain
            .totals
            .iter()
            .zip(&unit.totals)
            .any(|(a, b)| (a - b).abs() > 1e-3 * a.abs().max(1e-9))
    );
    // Decoding with 1 or 3 threads gives bit-identical scores (shards are consumed in order).
    let one = ScoreConfig {
        decode_threads: 1,
        ..ScoreConfig::default()
    };
    let three = ScoreConfig {
        decode_threads: 3,
        ..ScoreConfig::default()
    };
    let a = score_store(&store, &prepared, &one, &device, &mut |_| {}).expect("1");
    let b = score_store(&store, &prepared, &three, &device, &mut |_| {}).expect("3");
    assert_eq!(a.totals, b.totals);
    // Only windows with prepared queries are scored.
    let s = score_store(
        &store,
        &prepared[1..2],
        &ScoreConfig::default(),
        &device,
        &mut |_| {},
    )
    .expect("w1");
    let rows: u64 = batches
        .iter()
        .filter(|b| b.window == 1)
        .map(|b| b.rows.len() as u64)
        .sum();
    assert_eq!(s.stats.rows, rows);
}

/// Rows whose sketches hold NaN or ∞ are left out of every score and ranking and counted; the
/// rest score exactly as a store without them (plain and normalised). Without the check, the
/// NaN row's document would score NaN and head every ranking (`total_cmp` orders NaN first).
#[test]
fn non_finite_rows_are_left_out_and_counted() {
    let run = run();
    // (step, layer, item, value): row 0 of three steps, in both layers, NaN and ±∞.
    let poison: [(u64, usize, usize, f32); 3] = [
        (3, 0, 0, f32::NAN),
        (12, 1, 2, f32::INFINITY),
        (25, 0, 5, f32::NEG_INFINITY),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    let (store, batches) = store_with(dir.path(), |b| {
        for &(step, l, i, v) in &poison {
            if b.step == step {
                b.sketches[l][i] = v;
            }
        }
    });
    // The reference: the same batches without the poisoned rows.
    let clean: Vec<SketchBatch> = batches
        .iter()
        .map(|b| {
            let mut b = b.clone();
            if poison.iter().any(|p| p.0 == b.step) {
                b.rows.remove(0);
                for (l, spec) in run.layers.iter().enumerate() {
                    b.sketches[l].drain(..spec.sketch_len());
                }
            }
            b
        })
        .collect();
    let total: u64 = batches.iter().map(|b| b.rows.len() as u64).sum();
    let prepared = prepared();
    for normalize in [false, true] {
        let config = ScoreConfig::default().normalize(normalize);
        let s =
            score_store(&store, &prepared, &config, &Device::flex(), &mut |_| {}).expect("score");
        assert_eq!(s.stats.nonfinite_rows, 3, "normalize {normalize}");
        assert_eq!(s.stats.rows, total - 3);
        assert!(s.totals.iter().all(|v| v.is_finite()));
        // The split pass leaves out the same rows.
        let s = with_all_splits(s, &store, &prepared, &config, &Device::flex());
        check(&s, &reference(&clean, &prepared, false, normalize));
    }
}

/// The GPU path (burn's wgpu backend; Mesa's software Vulkan in CI) equals the CPU result.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_scores_equal_cpu_scores() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, batches) = store(dir.path());
    let prepared = prepared();
    let gpu = burn::tensor::Device::wgpu(burn::tensor::DeviceKind::Cpu);
    // The default (normalised rows) and the plain inner product.
    for normalize in [true, false] {
        let config = ScoreConfig::default().normalize(normalize);
        let s = score_store(&store, &prepared, &config, &gpu, &mut |_| {}).expect("wgpu score");
        let s = with_all_splits(s, &store, &prepared, &config, &gpu);
        check(&s, &reference(&batches, &prepared, false, normalize));
        let cpu =
            score_store(&store, &prepared, &config, &Device::flex(), &mut |_| {}).expect("cpu");
        let scale = cpu.totals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in s.totals.iter().zip(&cpu.totals) {
            assert!(
                (a - b).abs() < 1e-5 * scale,
                "wgpu {a} vs cpu {b} (normalize {normalize})"
            );
        }
    }
}

/// Querying a store while its writer is still running scores a consistent snapshot: the shards
/// the manifest had committed when the store was opened, every row of them once, exactly the
/// reference over those steps, never a half-written shard. The writer runs on another thread
/// (its background thread behind it), committing a shard every few steps, while this thread
/// opens and scores the store over and over.
#[test]
fn scoring_while_the_writer_runs_sees_committed_shards_only() {
    const STEPS: u64 = 300;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().to_path_buf();
    let batches = synthetic_batches(STEPS);
    let prepared = prepared_windows((STEPS / WINDOW_STEPS) as u32);
    let config = ScoreConfig::default().normalize(false);
    let device = Device::flex();
    let mut w = StoreWriter::create(&path, store_config()).expect("create");
    w.begin(&run()).expect("begin");
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut snapshots = std::collections::BTreeSet::new();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for b in &batches {
                w.sketches(b.clone()).expect("sketches");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            w.finish().expect("finish");
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            // Before its first shard is committed a store has no manifest yet: a clear error.
            let store = match Store::open(&path) {
                Ok(store) => store,
                Err(influence_store::StoreError::Missing { path: p, .. })
                    if p.ends_with("manifest.json") && snapshots.is_empty() =>
                {
                    continue;
                }
                Err(e) => panic!("a running store must open: {e}"),
            };
            let shards = &store.manifest().shards;
            let Some(last) = shards.last().map(|s| s.last_step) else {
                continue;
            };
            let s = score_store(&store, &prepared, &config, &device, &mut |_| {})
                .expect("scoring a running store");
            let committed: Vec<SketchBatch> =
                batches.iter().filter(|b| b.step <= last).cloned().collect();
            assert_eq!(
                s.stats.rows,
                shards.iter().map(|s| s.rows).sum::<u64>(),
                "every committed row once"
            );
            assert_eq!(
                s.stats.rows,
                committed.iter().map(|b| b.rows.len() as u64).sum::<u64>(),
                "the snapshot up to step {last} is whole"
            );
            let s = with_all_splits(s, &store, &prepared, &config, &device);
            check(&s, &reference(&committed, &prepared, false, false));
            snapshots.insert(last);
        }
        writer.join().expect("writer thread");
    });
    let mid_write = snapshots.iter().filter(|&&s| s + 1 < STEPS).count();
    assert!(
        mid_write >= 3,
        "only {mid_write} snapshots taken while the writer ran: {snapshots:?}"
    );
    println!("{} snapshots scored while writing", snapshots.len());
}
