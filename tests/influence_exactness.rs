//! The analyzer against exact references (DESIGN §4, rungs 2–4), on models small enough for a
//! dense Fisher: the one-layer model of `influence_tests::tasks` and a one-block tiny GPT.
//!
//! Every store here is written by the post-hoc path ([`sketch_corpus`]) at one checkpoint, so the
//! factors `A`, `S`, the corrected eigenvalues `Λ` and the sketches all come from the same
//! parameters and the same documents: the Fisher the factors estimate is exactly
//! `F = mean_n vec(G_n) vec(G_n)ᵀ` over the corpus, which the tests build densely.
//!
//! Tolerances: scores are f32 (stored sketches, f32 matmul) of f64-preconditioned gradients,
//! so "equal" means a difference below 1e-4 of the query's largest |score| (f32 sums of a few
//! hundred terms lose ~1e-6 relative; 1e-4 leaves margin without hiding a wrong damping,
//! scale or sign, each of which changes scores by ≥ 1 %).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use influence_analyzer::query::{load_window_model, query_gradients};
use influence_analyzer::{
    Damping, Document, Query, ScoreConfig, Scores, Strategy, Task, analyze, sketch_corpus,
};
use influence_core::{ProjectionKind, WindowRecord};
use influence_hook::{HookConfig, Tap};
use influence_store::{SketchDtype, Store, StoreConfig, StoreWriter};
use influence_tests::tasks::{LinearTask, text_of};
use influence_tests::{linear_grad, pearson, spd_solve, spearman};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tiny_gpt::task::GptTask;
use tiny_gpt::train::{TrainConfig, prepare, train};

fn cpu() -> Device {
    Device::flex()
}

/// Sketches the task's corpus at `ckpt` into `dir` and opens the store.
fn sketch<T: Task>(task: &T, ckpt: &Path, dir: &Path, hook: HookConfig) -> Store {
    let docs = task.corpus().expect("corpus");
    let writer = StoreWriter::create(
        dir,
        StoreConfig {
            dtype: SketchDtype::F32,
            ..StoreConfig::default()
        },
    )
    .expect("store");
    sketch_corpus(task, ckpt, &docs, hook, writer, &cpu(), &mut |_, _| {}).expect("sketch");
    Store::open(dir).expect("open")
}

/// Exact gradients (identity projections), every batch in the fit.
fn exact_hook() -> HookConfig {
    HookConfig::default()
        .projection(ProjectionKind::Identity)
        .factor_every(1)
        .fit_batches(10_000)
}

fn scores<T: Task>(task: &T, store: &Store, queries: &[Query], strategy: Strategy) -> Scores {
    let config = ScoreConfig::default().strategy(strategy);
    analyze(task, store, queries, &config, &cpu(), &mut |_| {})
        .expect("analyze")
        .scores
}

/// Per-document exact gradients (all layers, concatenated `vec`), read from an identity store,
/// in the order of `docs` ids.
fn stored_gradients(store: &Store) -> Vec<(u64, Vec<f64>)> {
    let mut out = Vec::new();
    for chunk in store.sketches(&Default::default()).expect("stream") {
        let chunk = chunk.expect("chunk");
        for r in 0..chunk.len() {
            let mut v = Vec::new();
            for (l, spec) in store.run().layers.iter().enumerate() {
                let n = spec.sketch_len();
                v.extend(
                    chunk.sketches[l][r * n..(r + 1) * n]
                        .iter()
                        .map(|&x| f64::from(x)),
                );
            }
            out.push((chunk.doc_ids[r], v));
        }
    }
    out
}

/// `(F_l + λ_l I)⁻¹` per layer with `F_l = (Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)ᵀ`, built densely, applied
/// to the query gradient of every layer; returns the concatenated preconditioned `vec`s.
fn dense_ekfac(factors: &WindowRecord, grads: &[Vec<f64>], damping: &[f64]) -> Vec<f64> {
    let mut out = Vec::new();
    for (l, f) in factors.layers.iter().enumerate() {
        let (ds, da) = (f.eig_s.dim, f.eig_a.dim);
        let n = ds * da;
        let lam = f.corrected.as_ref().expect("corrected eigenvalues");
        let q = |r: usize, c: usize| {
            let (i, j, k, m) = (r / da, r % da, c / da, c % da);
            f.eig_s.vectors[i * ds + k] * f.eig_a.vectors[j * da + m]
        };
        let mut dense = vec![0.0; n * n];
        for r in 0..n {
            for c in 0..n {
                let mut acc = if r == c { damping[l] } else { 0.0 };
                for e in 0..n {
                    acc += q(r, e) * lam[e] * q(c, e);
                }
                dense[r * n + c] = acc;
            }
        }
        out.extend(spd_solve(&dense, &grads[l], n));
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Largest |a − b| over the largest |b|.
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// A one-block GPT trained briefly on a small generated corpus, saved as a checkpoint.
struct Gpt {
    task: GptTask,
    ckpt: PathBuf,
    queries: Vec<Query>,
    _dir: tempfile::TempDir,
}

fn gpt() -> Gpt {
    let mut config = TrainConfig::tiny();
    config.corpus.facts = 8;
    config.corpus.arithmetic = 6;
    config.corpus.slopes = 4;
    config.corpus.linear = 4;
    config.corpus.code = 2;
    config.d_model = 8;
    config.n_layers = 1;
    config.n_heads = 2;
    config.d_ff = 16;
    config.steps = 30;
    config.lr = 3e-3;
    let prepared = prepare(&config).expect("prepare");
    let device = cpu().autodiff();
    let report = train(&config, &prepared, &device, None).expect("train");
    let dir = tempfile::tempdir().expect("tmp");
    report
        .model
        .save_file(dir.path().join("model"))
        .expect("save");
    let task = GptTask::new(config, prepared.bpe);
    // Queries: the second half of a few corpus documents given the first half.
    let queries = task
        .docs
        .iter()
        .step_by(5)
        .take(4)
        .map(|d| {
            let cut = d
                .text
                .char_indices()
                .filter(|(_, c)| *c == ' ')
                .nth(2)
                .map_or(1, |(i, _)| i);
            Query {
                id: format!("q{}", d.id),
                prompt: d.text[..cut].to_string(),
                completion: d.text[cut..].to_string(),
                extra: Default::default(),
            }
        })
        .collect();
    Gpt {
        task,
        ckpt: dir.path().join("model.bpk"),
        queries,
        _dir: dir,
    }
}

/// (i) EK-FAC scores equal a dense solve with the same Kronecker eigenbasis and corrected
/// eigenvalues; and the analyzer's query gradients equal autodiff on each query alone.
#[test]
fn ekfac_scores_equal_a_dense_solve_in_the_gpt() {
    let g = gpt();
    let dir = tempfile::tempdir().expect("tmp");
    let store = sketch(&g.task, &g.ckpt, dir.path(), exact_hook());
    assert_eq!(store.run().layers.len(), 4, "qkv, out, fc1, fc2");
    let s = scores(&g.task, &store, &g.queries, Strategy::Ekfac);

    // Query gradients: batched through the probe vs autodiff of each query alone.
    let device = cpu();
    let (model, probe) = load_window_model(&g.task, &store, 0, &device).expect("model");
    let qg = query_gradients(&g.task, &model, &probe, &g.queries, 3, &device).expect("grads");
    let plain = g
        .task
        .load_model(&g.ckpt, &Tap::detached(), &device.clone().autodiff())
        .expect("model");
    for (qi, q) in g.queries.iter().enumerate() {
        let (batch, _) = g
            .task
            .query_batch(std::slice::from_ref(q), &device.clone().autodiff())
            .expect("batch");
        let grads = g.task.completion_nll(&plain, &batch).sum().backward();
        let b = &plain.blocks[0];
        for (l, layer) in [&b.attn.qkv, &b.attn.out, &b.mlp.fc1, &b.mlp.fc2]
            .into_iter()
            .enumerate()
        {
            let want = linear_grad(layer, &grads);
            let n = want.len();
            let got = &qg.grads[l][qi * n..(qi + 1) * n];
            assert!(
                max_rel(got, &want) < 1e-4,
                "query {qi} layer {l}: {}",
                max_rel(got, &want)
            );
        }
    }

    // Dense EK-FAC solve with the analyzer's damping.
    let factors = store.factors(0).expect("factors");
    let config = ScoreConfig::default();
    let prepared =
        influence_analyzer::query::prepare(store.run(), &factors, &qg, &config).expect("prepare");
    let docs = stored_gradients(&store);
    for qi in 0..g.queries.len() {
        let per_layer: Vec<Vec<f64>> = qg
            .grads
            .iter()
            .zip(&store.run().layers)
            .map(|(v, spec)| {
                let n = spec.d_out * spec.d_in_aug();
                v[qi * n..(qi + 1) * n].to_vec()
            })
            .collect();
        let x = dense_ekfac(&factors, &per_layer, &prepared.damping);
        let want: Vec<f64> = docs.iter().map(|(_, gn)| dot(&x, gn)).collect();
        let got: Vec<f64> = docs
            .iter()
            .map(|(id, _)| {
                let d = s.docs.iter().position(|d| d.id == *id).expect("doc scored");
                s.score(d, qi)
            })
            .collect();
        let e = max_rel(&got, &want);
        assert!(
            e < 1e-4,
            "query {qi}: EK-FAC vs dense solve, max rel err {e:.2e}"
        );
    }
}
