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
    Document, Query, ScoreConfig, Scores, Strategy, Task, TokenScorer, analyze, sketch_corpus,
};
use influence_core::{ProjectionKind, WindowRecord};
use influence_hook::{HookConfig, Tap};
use influence_store::{SketchDtype, Store, StoreConfig, StoreWriter};
use influence_tests::tasks::{LinearTask, join, text_of};
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

/// Plain scores (`normalize(false)`: the inner product the references compute; the default
/// normalises rows).
fn scores<T: Task>(task: &T, store: &Store, queries: &[Query], strategy: Strategy) -> Scores {
    let config = ScoreConfig::default().strategy(strategy).normalize(false);
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
                for (e, lam_e) in lam.iter().enumerate() {
                    acc += q(r, e) * lam_e * q(c, e);
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
/// Query `qi`'s score of each document id, in the order given (each id must be scored).
fn scores_by_id(s: &Scores, ids: impl Iterator<Item = u64>, qi: usize) -> Vec<f64> {
    ids.map(|id| {
        let d = s.docs.iter().position(|x| x.id == id).expect("doc scored");
        s.score(d, qi)
    })
    .collect()
}

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
    gpt_with(None)
}

/// [`gpt`], recording a training-time store into `store` when given: 2×2 eigenbasis sketches
/// (lossy on purpose) and a window every 10 of the 30 steps.
fn gpt_with(store: Option<&Path>) -> Gpt {
    let mut config = TrainConfig::tiny();
    config.corpus.registry_per_source = 1;
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
    config.seq_len = 128;
    if store.is_some() {
        config.hook = config.hook.k_a(2).k_g(2).window_steps(10);
    }
    let prepared = prepare(&config).expect("prepare");
    let device = cpu().autodiff();
    let sink = store.map(|dir| {
        Box::new(StoreWriter::create(dir, config.store.clone()).expect("store"))
            as Box<dyn influence_core::Sink>
    });
    let report = train(&config, &prepared, &device, sink).expect("train");
    let dir = tempfile::tempdir().expect("tmp");
    report
        .model
        .save_file(dir.path().join("model"))
        .expect("save");
    let task = GptTask::new(config, prepared.bpe).expect("task");
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

    // Token-wise influence: the per-position scores of a document, re-run alone at the
    // checkpoint, sum to its (exact-gradient) score.
    let tokens = TokenScorer::new(&g.task, &store, &prepared, &device).expect("token scorer");
    for doc in g.task.docs.iter().take(6) {
        let t = tokens.score(doc).expect("token-wise");
        assert_eq!(t.tokens.len(), t.scores[0].len());
        let d = s.docs.iter().position(|x| x.id == doc.id).expect("doc");
        for qi in 0..g.queries.len() {
            let sum: f64 = t.scores[qi].iter().map(|&v| f64::from(v)).sum();
            let scale = (0..s.docs.len()).fold(0.0f64, |m, x| m.max(s.score(x, qi).abs()));
            assert!(
                (sum - s.score(d, qi)).abs() < 1e-4 * scale,
                "doc {} query {qi}: tokens sum to {sum}, score {}",
                doc.id,
                s.score(d, qi)
            );
        }
    }
}

/// Exact influence `∇f ᵀ (F + D)⁻¹ ∇L_n` with the dense Fisher `F = mean_n vec(G_n) vec(G_n)ᵀ`
/// over every tracked parameter jointly (cross-layer blocks included) and `D` the per-layer
/// damping EK-FAC used; and the analyzer's scores for each strategy. Returns, per strategy,
/// the mean over queries of Pearson and Spearman R across documents, and the largest relative
/// difference.
fn against_exact<T: Task>(
    task: &T,
    ckpt: &Path,
    queries: &[Query],
) -> Vec<(Strategy, f64, f64, f64)> {
    let dir = tempfile::tempdir().expect("tmp");
    let store = sketch(task, ckpt, dir.path(), exact_hook());
    let device = cpu();
    let (model, probe) = load_window_model(task, &store, 0, &device).expect("model");
    let qg = query_gradients(task, &model, &probe, queries, 4, &device).expect("grads");
    let factors = store.factors(0).expect("factors");
    let prepared =
        influence_analyzer::query::prepare(store.run(), &factors, &qg, &ScoreConfig::default())
            .expect("prepare");
    let docs = stored_gradients(&store);
    let layers = &store.run().layers;
    let n: usize = layers.iter().map(|l| l.d_out * l.d_in_aug()).sum();
    let mut f = vec![0.0; n * n];
    for (_, g) in &docs {
        for r in 0..n {
            if g[r] == 0.0 {
                continue;
            }
            for c in 0..n {
                f[r * n + c] += g[r] * g[c] / docs.len() as f64;
            }
        }
    }
    let mut o = 0;
    for (l, spec) in layers.iter().enumerate() {
        for _ in 0..spec.d_out * spec.d_in_aug() {
            f[o * n + o] += prepared.damping[l];
            o += 1;
        }
    }
    let exact: Vec<Vec<f64>> = (0..queries.len())
        .map(|qi| {
            let q: Vec<f64> = qg
                .grads
                .iter()
                .zip(layers)
                .flat_map(|(v, spec)| {
                    let m = spec.d_out * spec.d_in_aug();
                    v[qi * m..(qi + 1) * m].to_vec()
                })
                .collect();
            let x = spd_solve(&f, &q, n);
            docs.iter().map(|(_, g)| dot(&x, g)).collect()
        })
        .collect();
    [
        Strategy::Ekfac,
        Strategy::Kfac,
        Strategy::Diagonal,
        Strategy::Identity,
    ]
    .into_iter()
    .map(|strategy| {
        let s = scores(task, &store, queries, strategy);
        let (mut p, mut sp, mut worst) = (0.0, 0.0, 0.0f64);
        for (qi, want) in exact.iter().enumerate() {
            let got: Vec<f64> = docs
                .iter()
                .map(|(id, _)| s.score(s.docs.iter().position(|d| d.id == *id).expect("doc"), qi))
                .collect();
            p += pearson(&got, want) / exact.len() as f64;
            sp += spearman(&got, want) / exact.len() as f64;
            worst = worst.max(max_rel(&got, want));
        }
        eprintln!("{strategy:?}: Pearson {p:.4}, Spearman {sp:.4}, max rel diff {worst:.2e}");
        (strategy, p, sp, worst)
    })
    .collect()
}

/// One layer, random inputs and targets, random weights: 48 documents, 4 queries.
fn random_linear() -> (LinearTask, PathBuf, Vec<Query>, tempfile::TempDir) {
    let mut rng = StdRng::seed_from_u64(11);
    let (d_in, d_out) = (6, 4);
    let mut v = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let docs = (0..48)
        .map(|i| Document {
            id: i,
            source: if i % 2 == 0 { "even" } else { "odd" }.into(),
            text: text_of(&v(d_in), &v(d_out)),
        })
        .collect();
    let queries = (0..4)
        .map(|i| Query {
            id: format!("q{i}"),
            prompt: join(&v(d_in)),
            completion: join(&v(d_out)),
            extra: Default::default(),
        })
        .collect();
    let task = LinearTask {
        d_in,
        d_out,
        bias: true,
        docs,
        batch: 8,
    };
    let dir = tempfile::tempdir().expect("tmp");
    let device = cpu().autodiff();
    influence_hook::seeded(&device, 5, || task.model(&Tap::detached(), &device, false))
        .save_file(dir.path().join("model"))
        .expect("save");
    (task, dir.path().join("model.bpk"), queries, dir)
}

/// (ii) Against exact damped-Fisher influence: the figures of `docs/accuracy.md`, held with
/// margin (measured: see that table). EK-FAC must beat the plain gradient dot product.
#[test]
fn ekfac_against_exact_influence_with_the_dense_fisher() {
    eprintln!("one-layer model (6→4 + bias, 48 documents):");
    let (task, ckpt, queries, _dir) = random_linear();
    let lin = against_exact(&task, &ckpt, &queries);
    eprintln!("tiny GPT (1 block, d=8, 4 tracked layers, 568 parameters):");
    let g = gpt();
    let gpt = against_exact(&g.task, &g.ckpt, &g.queries);
    let get = |v: &[(Strategy, f64, f64, f64)], s| {
        v.iter()
            .find(|x| x.0 == s)
            .map(|x| (x.1, x.2))
            .expect("strategy")
    };
    let (lp, ls) = get(&lin, Strategy::Ekfac);
    let (gp, gs) = get(&gpt, Strategy::Ekfac);
    assert!(
        lp > LINEAR_PEARSON && ls > LINEAR_SPEARMAN,
        "one layer: {lp} {ls}"
    );
    assert!(gp > GPT_PEARSON && gs > GPT_SPEARMAN, "GPT: {gp} {gs}");
    assert!(
        gp > get(&gpt, Strategy::Identity).0,
        "EK-FAC must beat identity on the GPT"
    );
}

const LINEAR_PEARSON: f64 = 0.75;
const LINEAR_SPEARMAN: f64 = 0.68;
const GPT_PEARSON: f64 = 0.5;
const GPT_SPEARMAN: f64 = 0.25;

/// (ii, exact case) With one-hot inputs and one-hot output gradients every per-example gradient
/// has a single non-zero entry, `A` and `S` are diagonal with distinct values, so the Kronecker
/// eigenbasis is the standard basis and the Fisher is diagonal in it: EK-FAC's corrected
/// eigenvalues are then exactly the Fisher's diagonal and EK-FAC equals exact influence. The
/// same check on the random one-layer model must fail (EK-FAC is not exact there).
#[test]
fn ekfac_is_exact_where_the_fisher_is_diagonal_in_the_eigenbasis() {
    let (d_in, d_out) = (4, 3);
    let mut docs = Vec::new();
    for j in 0..d_in {
        for _ in 0..=j {
            let n = docs.len();
            let mut x = vec![0.0f32; d_in];
            x[j] = 1.0;
            let mut y = vec![0.0f32; d_out];
            y[n % d_out] = 1.0 + 0.37 * n as f32;
            docs.push(Document {
                id: n as u64,
                source: "onehot".into(),
                text: text_of(&x, &y),
            });
        }
    }
    let task = LinearTask {
        d_in,
        d_out,
        bias: false,
        docs,
        batch: 3,
    };
    let dir = tempfile::tempdir().expect("tmp");
    let device = cpu().autodiff();
    influence_hook::unseeded(|| task.model(&Tap::detached(), &device, true))
        .save_file(dir.path().join("model"))
        .expect("save");
    let queries: Vec<Query> = [
        ("1 1 1 1", "1 2 3"),
        ("0.5 -1 1 2", "1 0 -1"),
        ("0 1 0.3 1", "0.5 0.5 -2"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (p, c))| Query {
        id: format!("q{i}"),
        prompt: (*p).into(),
        completion: (*c).into(),
        extra: Default::default(),
    })
    .collect();
    let r = against_exact(&task, &dir.path().join("model.bpk"), &queries);
    let ekfac = r.iter().find(|x| x.0 == Strategy::Ekfac).expect("ekfac");
    assert!(
        ekfac.3 < 1e-4,
        "EK-FAC vs exact where it should be exact: {:.2e}",
        ekfac.3
    );
    let kfac = r.iter().find(|x| x.0 == Strategy::Kfac).expect("kfac");
    assert!(kfac.3 > 1e-2, "KFAC is not exact here ({:.2e})", kfac.3);

    let (task, ckpt, queries, _dir) = random_linear();
    let r = against_exact(&task, &ckpt, &queries);
    let ekfac = r.iter().find(|x| x.0 == Strategy::Ekfac).expect("ekfac");
    assert!(
        ekfac.3 > 1e-3,
        "on random data EK-FAC is only an approximation ({:.2e})",
        ekfac.3
    );
}

/// (iii) Random projections: the sketch score's error against the exact-gradient score (same
/// factors, same preconditioner) shrinks like 1/√k with k_a = k_g = k. Fitted log-log slope over
/// k ∈ {4 … 128}, RMS over 8 seeds; the exact-gradient store itself (identity projections, full
/// rank) is the reference, and test (i) shows it equals the dense solve.
#[test]
fn sketch_error_shrinks_like_one_over_sqrt_k() {
    let g = gpt();
    let dir = tempfile::tempdir().expect("tmp");
    let exact_store = sketch(&g.task, &g.ckpt, &dir.path().join("exact"), exact_hook());
    let exact = scores(&g.task, &exact_store, &g.queries, Strategy::Ekfac);
    let ks = [4usize, 8, 16, 32, 64, 128];
    let mut errs = Vec::new();
    for &k in &ks {
        let mut mse = 0.0;
        let mut norm = 0.0;
        for seed in 0..8u64 {
            let hook = HookConfig::default()
                .sketch_scheme(influence_core::SketchScheme::Random)
                .k_a(k)
                .k_g(k)
                .projection_seed(seed)
                .factor_every(1)
                .fit_batches(10_000);
            let store = sketch(
                &g.task,
                &g.ckpt,
                &dir.path().join(format!("k{k}-{seed}")),
                hook,
            );
            let s = scores(&g.task, &store, &g.queries, Strategy::Ekfac);
            for (d, doc) in exact.docs.iter().enumerate() {
                let e = s.docs.iter().position(|x| x.id == doc.id).expect("doc");
                for q in 0..exact.queries {
                    mse += (s.score(e, q) - exact.score(d, q)).powi(2);
                    norm += exact.score(d, q).powi(2);
                }
            }
        }
        errs.push((mse / norm).sqrt());
    }
    let xs: Vec<f64> = ks.iter().map(|&k| (k as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let n = ks.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let slope = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (x - mx) * (y - my))
        .sum::<f64>()
        / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
    eprintln!("relative RMS error by k {ks:?}: {errs:.4?}; log-log slope {slope:.3}");
    assert!((-0.7..-0.3).contains(&slope), "slope {slope} is not ≈ −1/2");
    assert!(errs[5] < errs[0] / 3.0, "{errs:?}");
}

/// Post hoc, eigenbasis sketches score exactly EK-FAC restricted to the kept coordinates: the
/// reference rotates every exact per-document gradient (an identity store of the same
/// checkpoint and documents) into the recorded basis, takes Λ on the kept coordinates as their
/// mean square over every document and the full EK-FAC damping, and sums over the kept
/// coordinates. Tolerance 1e-4 of the largest |score|, as for the dense solve (f32 sketches and
/// matmuls).
#[test]
fn eigenbasis_sketches_equal_ekfac_restricted_to_the_kept_coordinates() {
    use influence_core::{CoordinateSelection, SketchScheme};
    let g = gpt();
    let dir = tempfile::tempdir().expect("tmp");
    let exact = sketch(&g.task, &g.ckpt, &dir.path().join("exact"), exact_hook());
    let eigen_hook = HookConfig::default()
        .factor_every(1)
        .fit_batches(10_000)
        .k_a(3)
        .k_g(3)
        .sketch_scheme(SketchScheme::Eigenbasis {
            select: CoordinateSelection::Eigenvalue,
            max_side: 64,
        });
    let eigen = sketch(&g.task, &g.ckpt, &dir.path().join("eigen"), eigen_hook);
    let s = scores(&g.task, &eigen, &g.queries, Strategy::Ekfac);
    let unit = analyze(
        &g.task,
        &eigen,
        &g.queries,
        &ScoreConfig::default(),
        &cpu(),
        &mut |_| {},
    )
    .expect("analyze normalised")
    .scores;

    let device = cpu();
    let (model, probe) = load_window_model(&g.task, &exact, 0, &device).expect("model");
    let qg = query_gradients(&g.task, &model, &probe, &g.queries, 3, &device).expect("grads");
    let exact_factors = exact.factors(0).expect("factors");
    let prepared = influence_analyzer::query::prepare(
        exact.run(),
        &exact_factors,
        &qg,
        &ScoreConfig::default(),
    )
    .expect("prepare");
    let factors = eigen.factors(0).expect("factors");
    let docs = stored_gradients(&exact);
    // Per layer: the basis, each document's kept coordinates, Λ on them.
    let mut layers = Vec::new();
    let mut offset = 0;
    for (l, spec) in exact.run().layers.iter().enumerate() {
        let (d_out, d_in) = (spec.d_out, spec.d_in_aug());
        let n = d_out * d_in;
        let basis = factors.layers[l].sketch_basis.clone().expect("basis");
        assert_eq!(basis.coords.len(), 9);
        let coords: Vec<Vec<f64>> = docs
            .iter()
            .map(|(_, gn)| {
                influence_ekfac::basis_coordinates(&basis, &gn[offset..offset + n], d_out, d_in)
            })
            .collect();
        let lam: Vec<f64> = (0..9)
            .map(|c| coords.iter().map(|v| v[c] * v[c]).sum::<f64>() / docs.len() as f64)
            .collect();
        layers.push((basis, coords, lam, d_out, d_in));
        offset += n;
    }
    for qi in 0..g.queries.len() {
        let want: Vec<f64> = (0..docs.len())
            .map(|d| {
                layers
                    .iter()
                    .enumerate()
                    .map(|(l, (basis, coords, lam, d_out, d_in))| {
                        let n = d_out * d_in;
                        let q = &qg.grads[l][qi * n..(qi + 1) * n];
                        let rq = influence_ekfac::basis_coordinates(basis, q, *d_out, *d_in);
                        (0..9)
                            .map(|c| rq[c] * coords[d][c] / (lam[c] + prepared.damping[l]))
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect();
        let got = scores_by_id(&s, docs.iter().map(|(id, _)| *id), qi);
        let e = max_rel(&got, &want);
        assert!(
            e < 1e-4,
            "query {qi}: eigenbasis vs restricted EK-FAC, max rel err {e:.2e}"
        );
        // Normalised rows: each document's score divided by its norm in the same metric,
        // `‖K‖² = Σ_l Σ_c K_c² / (Λ_c + λ_l)` (one row per document post hoc).
        let want_unit: Vec<f64> = want
            .iter()
            .enumerate()
            .map(|(d, w)| {
                let norm2: f64 = layers
                    .iter()
                    .enumerate()
                    .map(|(l, (_, coords, lam, _, _))| {
                        (0..9)
                            .map(|c| coords[d][c].powi(2) / (lam[c] + prepared.damping[l]))
                            .sum::<f64>()
                    })
                    .sum();
                w / norm2.sqrt()
            })
            .collect();
        let got_unit = scores_by_id(&unit, docs.iter().map(|(id, _)| *id), qi);
        let e = max_rel(&got_unit, &want_unit);
        assert!(
            e < 1e-4,
            "query {qi}: normalised eigenbasis scores vs cosine in the metric, max rel err {e:.2e}"
        );
    }
}

/// Sketch-space curvature (LoGra-style) for random projections: the score equals
/// `K_nᵀ (F_s + λI)⁻¹ (P_gᵀ Q P_a)` with `F_s = mean_n vec(K_n) vec(K_n)ᵀ` of the stored rows and
/// `λ = 0.1 × mean eigenvalue = 0.1 × trace(F_s) / k` — built here by brute force from the rows
/// read back and a Cholesky solve, within 1e-4 (f32 rows and scores).
#[test]
fn sketch_space_curvature_equals_the_dense_solve_in_the_sketch_space() {
    use influence_core::SketchScheme;
    let g = gpt();
    let dir = tempfile::tempdir().expect("tmp");
    let hook = HookConfig::default()
        .factor_every(1)
        .fit_batches(10_000)
        .k_a(3)
        .k_g(2)
        .sketch_scheme(SketchScheme::Random);
    let store = sketch(&g.task, &g.ckpt, &dir.path().join("random"), hook);
    let config = ScoreConfig::default()
        .sketch_curvature(true)
        .normalize(false);
    let s = analyze(&g.task, &store, &g.queries, &config, &cpu(), &mut |_| {})
        .expect("analyze")
        .scores;
    let plain = scores(&g.task, &store, &g.queries, Strategy::Ekfac);

    let device = cpu();
    let (model, probe) = load_window_model(&g.task, &store, 0, &device).expect("model");
    let qg = query_gradients(&g.task, &model, &probe, &g.queries, 3, &device).expect("grads");
    let run = store.run();
    // Rows per document and layer, as stored.
    let mut rows: Vec<(u64, Vec<Vec<f64>>)> = Vec::new();
    for chunk in store.sketches(&Default::default()).expect("stream") {
        let chunk = chunk.expect("chunk");
        for r in 0..chunk.len() {
            let per_layer = run
                .layers
                .iter()
                .enumerate()
                .map(|(l, spec)| {
                    let k = spec.sketch_len();
                    chunk.sketches[l][r * k..(r + 1) * k]
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect()
                })
                .collect();
            rows.push((chunk.doc_ids[r], per_layer));
        }
    }
    let n = rows.len() as f64;
    let mut changed = false;
    for qi in 0..g.queries.len() {
        let mut want = vec![0.0; rows.len()];
        for (l, spec) in run.layers.iter().enumerate() {
            let k = spec.sketch_len();
            let mut f = vec![0.0; k * k];
            for (_, r) in &rows {
                for i in 0..k {
                    for j in 0..k {
                        f[i * k + j] += r[l][i] * r[l][j] / n;
                    }
                }
            }
            let lambda = 0.1 * (0..k).map(|i| f[i * k + i]).sum::<f64>() / k as f64;
            for i in 0..k {
                f[i * k + i] += lambda;
            }
            let (pa, pg) = run.projections(l).expect("projections");
            let (d_out, d_in) = (spec.d_out, spec.d_in_aug());
            let q = &qg.grads[l][qi * d_out * d_in..(qi + 1) * d_out * d_in];
            let qs: Vec<f64> = influence_analyzer::query::project(
                q, d_out, d_in, &pg.values, spec.k_g, &pa.values, spec.k_a,
            )
            .iter()
            .map(|&v| f64::from(v))
            .collect();
            let x = spd_solve(&f, &qs, k);
            for (d, (_, r)) in rows.iter().enumerate() {
                want[d] += r[l].iter().zip(&x).map(|(a, b)| a * b).sum::<f64>();
            }
        }
        let got = scores_by_id(&s, rows.iter().map(|(id, _)| *id), qi);
        let e = max_rel(&got, &want);
        assert!(
            e < 1e-4,
            "query {qi}: sketch-space curvature vs dense solve, max rel err {e:.2e}"
        );
        let p = scores_by_id(&plain, rows.iter().map(|(id, _)| *id), qi);
        changed |= max_rel(&p, &want) > 1e-2;
    }
    assert!(
        changed,
        "the sketch-space curvature must differ from full-space EK-FAC"
    );
    // Only with EK-FAC and without rank.
    let bad = ScoreConfig::default()
        .sketch_curvature(true)
        .strategy(Strategy::Identity);
    let e = analyze(&g.task, &store, &g.queries, &bad, &cpu(), &mut |_| {}).expect_err("bad");
    assert!(e.to_string().contains("sketch_curvature"), "{e}");
}

/// Exact re-ranking ([`rerank`]) of a training-time store of three windows: every candidate's
/// exact score equals the reference built independently — per window, the document's gradient
/// by autodiff on the document alone at that window's checkpoint, the query's by autodiff on the
/// query alone, a dense EK-FAC solve with the window's factors and damping, weighted by the
/// document's rows in the window (and, with normalised rows, divided by the gradient's dense
/// `(F + λI)⁻¹` norm) — to 1e-4 of the largest score (f32 gradients and matmuls of
/// f64-preconditioned queries, as above). With `n` ≥ the corpus, the re-ranked top 5 is the
/// exact ranking's top 5; with a small `n` each query keeps at most `2n` candidates.
#[test]
fn reranked_scores_equal_autodiff_exact_scores_over_windows() {
    let dir = tempfile::tempdir().expect("tmp");
    let g = gpt_with(Some(dir.path()));
    let store = Store::open(dir.path()).expect("open");
    let windows: Vec<u32> = store.complete_windows().map(|w| w.window).collect();
    assert_eq!(windows, vec![0, 1, 2], "30 steps, a window every 10");
    let corpus = g.task.corpus().expect("corpus");
    let device = cpu();
    let ad = device.clone().autodiff();
    let reduction = g.task.loss_reduction();

    // Rows per (window, document), read from the store.
    let mut rows: std::collections::HashMap<(u32, u64), f64> = Default::default();
    for &w in &windows {
        let opts = influence_store::ReadOptions {
            windows: Some(vec![w]),
            ..Default::default()
        };
        for chunk in store.sketches(&opts).expect("stream") {
            for id in chunk.expect("chunk").doc_ids {
                *rows.entry((w, id)).or_default() += 1.0;
            }
        }
    }

    // Per window: dense-preconditioned query gradients and each document's exact gradient.
    struct Window {
        queries: Vec<Vec<f64>>,
        docs: Vec<(u64, Vec<f64>, f64)>, // id, vec(G_n) over layers, ‖G_n‖² in the metric
    }
    let plain = ScoreConfig::default().normalize(false);
    let prepared = influence_analyzer::prepare_queries(
        &g.task,
        &store,
        &g.queries,
        &plain,
        &device,
        &mut |_| {},
    )
    .expect("prepare");
    let mut reference = Vec::new();
    for p in &prepared {
        let model = g
            .task
            .load_model(
                &store.checkpoint_path(p.window).expect("ckpt"),
                &Tap::detached(),
                &ad,
            )
            .expect("model");
        let factors = store.factors(p.window).expect("factors");
        let layer_grads = |grads: &burn::tensor::Gradients, scale: f64| -> Vec<Vec<f64>> {
            let b = &model.blocks[0];
            [&b.attn.qkv, &b.attn.out, &b.mlp.fc1, &b.mlp.fc2]
                .into_iter()
                .map(|l| linear_grad(l, grads).iter().map(|v| v * scale).collect())
                .collect()
        };
        let queries = g
            .queries
            .iter()
            .map(|q| {
                let (batch, _) = g
                    .task
                    .query_batch(std::slice::from_ref(q), &ad)
                    .expect("batch");
                let grads = g.task.completion_nll(&model, &batch).sum().backward();
                dense_ekfac(&factors, &layer_grads(&grads, 1.0), &p.damping)
            })
            .collect();
        let docs = corpus
            .iter()
            .filter(|d| rows.contains_key(&(p.window, d.id)))
            .map(|d| {
                let [(batch, step)] = <[_; 1]>::try_from(
                    g.task
                        .document_batches(std::slice::from_ref(d), &ad)
                        .expect("batch"),
                )
                .map_err(|_| "one batch")
                .expect("one batch for one document");
                use influence_hook::FitLoss;
                let grads = model
                    .fit_loss(&batch, influence_hook::FitLabels::Empirical)
                    .backward();
                let per_layer = layer_grads(&grads, f64::from(step.loss_scale(reduction)));
                let pre = dense_ekfac(&factors, &per_layer, &p.damping);
                let flat: Vec<f64> = per_layer.concat();
                let n2 = dot(&pre, &flat);
                (d.id, flat, n2)
            })
            .collect();
        reference.push(Window { queries, docs });
    }
    // The exact score, each window's part divided by `per_window(w, q)` (1, or the nats).
    let want_by = |normalize: bool, id: u64, q: usize, per_window: &dyn Fn(usize) -> f64| {
        windows
            .iter()
            .zip(&reference)
            .enumerate()
            .filter_map(|(i, (&w, r))| {
                let (_, gn, n2) = r.docs.iter().find(|(d, _, _)| *d == id)?;
                let weight = rows[&(w, id)] / if normalize { n2.sqrt() } else { 1.0 };
                Some(weight * dot(&r.queries[q], gn) / per_window(i))
            })
            .sum::<f64>()
    };
    let want = |normalize: bool, id: u64, q: usize| want_by(normalize, id, q, &|_| 1.0);

    for config in [plain.clone(), ScoreConfig::default()] {
        let a =
            analyze(&g.task, &store, &g.queries, &config, &device, &mut |_| {}).expect("analyze");
        let n_docs = a.scores.docs.len();
        let r = influence_analyzer::rerank(
            &g.task,
            &store,
            &a,
            &corpus,
            &config,
            n_docs,
            &device,
            &mut |_, _| {},
        )
        .expect("rerank");
        assert_eq!(r.stats.documents, n_docs);
        assert_eq!(r.stats.windows, 3);
        assert_eq!(
            r.stats.gradients,
            reference.iter().map(|w| w.docs.len()).sum::<usize>()
        );
        for q in 0..g.queries.len() {
            let ids: Vec<u64> = a.scores.docs.iter().map(|d| d.id).collect();
            let expect: Vec<f64> = ids
                .iter()
                .map(|&id| want(config.normalize, id, q))
                .collect();
            let got: Vec<f64> = (0..n_docs)
                .map(|d| r.exact_score(d, q).expect("every document is a candidate"))
                .collect();
            let e = max_rel(&got, &expect);
            assert!(
                e < 1e-4,
                "normalize {} query {q}: re-ranked vs autodiff + dense solve, max rel err {e:.2e}",
                config.normalize
            );
            // Per nat: each window's part divided by the query's nats at that window (they
            // differ between the checkpoints, or this would be a rescaling).
            assert!(
                a.prepared
                    .iter()
                    .any(|p| p.nats[q] != a.prepared[0].nats[q])
            );
            let nats = |i: usize| a.prepared[i].nats[q];
            let expect_per_nat: Vec<f64> = ids
                .iter()
                .map(|&id| want_by(config.normalize, id, q, &nats))
                .collect();
            let got_per_nat: Vec<f64> = (0..n_docs)
                .map(|d| r.exact_score_per_nat(d, q).expect("candidate"))
                .collect();
            let e = max_rel(&got_per_nat, &expect_per_nat);
            assert!(e < 1e-4, "query {q}: exact per nat, max rel err {e:.2e}");
            // The sketches (2×2) are lossy: the exact scores are not the sketch scores.
            let sketch = a.scores.column(q);
            assert!(
                max_rel(&sketch, &expect) > 1e-2,
                "query {q}: sketch already exact?"
            );
            let top: Vec<u64> = r.top(q, 5).iter().map(|&d| ids[d]).collect();
            let best: Vec<u64> = influence_analyzer::scorer::top_k(n_docs, 5, |d| expect[d])
                .into_iter()
                .map(|d| ids[d])
                .collect();
            assert_eq!(top, best, "query {q}: re-ranked top 5");
            let report = a.report_reranked(&r, 3, 3);
            assert_eq!(report.ranking, "exact");
            let first = &report.queries[q].top[0];
            let d = ids.iter().position(|&id| id == best[0]).expect("doc");
            assert_eq!(first.doc_id, best[0]);
            assert_eq!(first.exact, r.exact_score(d, q));
            assert_eq!(Some(first.score_per_nat), r.exact_score_per_nat(d, q));
            assert_eq!(
                first.score,
                a.scores.score(d, q),
                "the sketch score rides along"
            );
        }
        // A small n: each query's own candidates are at most its top 2 and bottom 2.
        let small = influence_analyzer::rerank(
            &g.task,
            &store,
            &a,
            &corpus,
            &config,
            2,
            &device,
            &mut |_, _| {},
        )
        .expect("rerank");
        assert!(small.stats.documents <= 4 * g.queries.len());
        for q in 0..g.queries.len() {
            assert!(small.ranking[q].len() <= 4 && small.ranking[q].len() >= 2);
            let exact: Vec<f64> = small
                .top(q, 4)
                .iter()
                .map(|&d| small.exact_score(d, q).expect("candidate"))
                .collect();
            assert!(
                exact.windows(2).all(|w| w[0] >= w[1]),
                "query {q}: ranked by exact score"
            );
        }
        // The full re-ranking restricted to n = 2 is the re-ranking at n = 2: the same
        // candidates, stats and (up to f32 batching differences) exact scores.
        let restricted = r.restrict(&a.scores, 2).expect("restrict");
        assert_eq!(restricted.docs, small.docs);
        assert_eq!(
            (restricted.stats.per_side, restricted.stats.documents),
            (small.stats.per_side, small.stats.documents)
        );
        assert_eq!(
            (restricted.stats.windows, restricted.stats.gradients),
            (small.stats.windows, small.stats.gradients)
        );
        let e = max_rel(&restricted.exact, &small.exact);
        assert!(e < 1e-5, "restricted vs re-ranked at n = 2: {e:.2e}");
        let e = max_rel(&restricted.exact_per_nat, &small.exact_per_nat);
        assert!(
            e < 1e-5,
            "restricted vs re-ranked at n = 2, per nat: {e:.2e}"
        );
        for q in 0..g.queries.len() {
            let mut a_set = restricted.top(q, 4);
            let mut b_set = small.top(q, 4);
            a_set.sort_unstable();
            b_set.sort_unstable();
            assert_eq!(a_set, b_set, "query {q}: restricted candidates");
        }
        for bad in [0, n_docs + 1] {
            let err = r.restrict(&a.scores, bad).expect_err("n out of range");
            assert!(err.to_string().contains("1 ≤ n ≤"), "{err}");
        }
        assert!(small.restrict(&a.scores, 3).is_err(), "cannot widen");
    }
    let a = analyze(&g.task, &store, &g.queries, &plain, &device, &mut |_| {}).expect("analyze");
    let err = influence_analyzer::rerank(
        &g.task,
        &store,
        &a,
        &corpus[..1],
        &plain,
        3,
        &device,
        &mut |_, _| {},
    )
    .expect_err("a candidate missing from the corpus");
    assert!(
        err.to_string().contains("not in the task's corpus"),
        "{err}"
    );
}

/// `verify_checkpoints` loads every window checkpoint of a training-time store and checks that
/// each parameter is finite; a checkpoint with one NaN weight, or one cut short, is an error
/// naming the file and window (and the parameter, for the NaN) — the checks a re-signed
/// manifest cannot catch.
#[test]
fn verify_checkpoints_names_a_nan_parameter_and_a_truncated_file_and_loss_reduction_is_checked() {
    use burn::module::{ModuleMapper, Param};
    let dir = tempfile::tempdir().expect("tmp");
    let mut g = gpt_with(Some(dir.path()));
    let store = Store::open(dir.path()).expect("open");
    let device = cpu();
    // A task whose loss reduction is not the store's is refused, naming both and the field.
    let written = g.task.config.hook.loss_reduction;
    g.task.config.hook.loss_reduction = influence_core::LossReduction::Sum;
    assert_ne!(written, influence_core::LossReduction::Sum);
    let err = analyze(
        &g.task,
        &store,
        &g.queries,
        &ScoreConfig::default(),
        &device,
        &mut |_| {},
    )
    .expect_err("another loss reduction")
    .to_string();
    assert!(
        err.contains("run.loss_reduction") && err.contains("Sum") && err.contains("MeanOverTokens"),
        "{err}"
    );
    g.task.config.hook.loss_reduction = written;
    let ok = influence_analyzer::verify_checkpoints(&g.task, &store, &device).expect("verify");
    assert_eq!(ok.checkpoints, 3);
    assert!(ok.parameters > 0 && ok.values > 0);

    /// Sets the first value of the `n`-th float parameter (in visit order) to NaN.
    struct Poison(usize);
    impl ModuleMapper for Poison {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<burn::tensor::Tensor<D>>,
        ) -> Param<burn::tensor::Tensor<D>> {
            let hit = self.0 == 0;
            self.0 = self.0.wrapping_sub(1);
            if !hit {
                return param;
            }
            param.map(|t| {
                let shape = t.shape();
                let mut v: Vec<f32> = t
                    .to_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .expect("f32");
                v[0] = f32::NAN;
                burn::tensor::Tensor::from_data(
                    burn::tensor::TensorData::new(v, shape),
                    &t.device(),
                )
            })
        }
    }
    let path = store.checkpoint_path(1).expect("ckpt");
    let (model, _) = load_window_model(&g.task, &store, 1, &device).expect("load");
    model
        .map(&mut Poison(2))
        .save_file(path.with_extension(""))
        .expect("save");
    let err = influence_analyzer::verify_checkpoints(&g.task, &store, &device)
        .expect_err("a NaN weight")
        .to_string();
    assert!(
        err.contains("window-00001") && err.contains("window 1") && err.contains("1 NaN or ∞"),
        "{err}"
    );

    let path = store.checkpoint_path(2).expect("ckpt");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    // Window 1 still fails first; restore it from window 0's checkpoint (finite) to reach 2.
    std::fs::copy(
        store.checkpoint_path(0).expect("ckpt"),
        store.checkpoint_path(1).expect("ckpt"),
    )
    .expect("copy");
    let err = influence_analyzer::verify_checkpoints(&g.task, &store, &device)
        .expect_err("a truncated checkpoint")
        .to_string();
    assert!(err.contains("window-00002"), "{err}");
}

/// A store written without factors (`factors = false`) scores under identity, plain and
/// learning-rate weighted, exactly as the same sketches with factors do; with exact gradients
/// stored (identity projections), the plain score is the gradient dot product `⟨g_q, g_n⟩`
/// itself, and the exact re-ranking (normalised rows, no factor for the metric) agrees with the
/// sketch. Any other strategy is refused with the window, the layer and the fix named.
#[test]
fn a_store_without_factors_scores_under_identity() {
    let (task, ckpt, queries, _dir) = random_linear();
    let bare_dir = tempfile::tempdir().expect("tmp");
    let bare = sketch(&task, &ckpt, bare_dir.path(), exact_hook().factors(false));
    let full_dir = tempfile::tempdir().expect("tmp");
    let full = sketch(&task, &ckpt, full_dir.path(), exact_hook());
    let window = bare.complete_windows().next().expect("a window").window;
    let factors = bare.factors(window).expect("factors file");
    assert!(factors.layers.is_empty(), "no factors were written");

    let plain = scores(&task, &bare, &queries, Strategy::Identity);
    let with_factors = scores(&task, &full, &queries, Strategy::Identity);
    assert_eq!(
        plain.totals, with_factors.totals,
        "the factors change nothing"
    );
    // Against the gradients themselves: the stored rows are exact (identity projections), the
    // query gradient comes from autodiff at the checkpoint.
    let (model, probe) = load_window_model(&task, &bare, window, &cpu()).expect("model");
    let grads = query_gradients(&task, &model, &probe, &queries, 8, &cpu()).expect("grads");
    let stored = stored_gradients(&bare);
    for (q, _) in queries.iter().enumerate() {
        let gq: Vec<f64> = grads
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, spec)| {
                let n = spec.d_out * spec.d_in_aug();
                grads.grads[l][q * n..(q + 1) * n].to_vec()
            })
            .collect();
        let mut want: std::collections::BTreeMap<u64, f64> = Default::default();
        for (id, g) in &stored {
            *want.entry(*id).or_default() += dot(&gq, g);
        }
        let got = scores_by_id(&plain, want.keys().copied(), q);
        let want: Vec<f64> = want.values().copied().collect();
        let e = max_rel(&got, &want);
        assert!(
            e < 1e-5,
            "query {q}: identity vs ⟨g_q, g_n⟩, max rel err {e:.2e}"
        );
    }
    // Learning-rate weighted: each row times its step's learning rate.
    let config = ScoreConfig::default()
        .strategy(Strategy::Identity)
        .normalize(false)
        .lr_weighting(true);
    let lr = analyze(&task, &bare, &queries, &config, &cpu(), &mut |_| {}).expect("lr");
    let with_factors =
        analyze(&task, &full, &queries, &config, &cpu(), &mut |_| {}).expect("lr, factors");
    assert_eq!(lr.scores.totals, with_factors.scores.totals);
    // Normalised rows (the default) and the exact re-ranking need no factor either: identity
    // sketches are the exact gradients, so the re-ranked scores equal the sketch scores.
    let config = ScoreConfig::default().strategy(Strategy::Identity);
    let a = analyze(&task, &bare, &queries, &config, &cpu(), &mut |_| {}).expect("normalised");
    let corpus = task.corpus().expect("corpus");
    let r = influence_analyzer::rerank(
        &task,
        &bare,
        &a,
        &corpus,
        &config,
        5,
        &cpu(),
        &mut |_, _| {},
    )
    .expect("rerank without factors");
    for q in 0..queries.len() {
        for d in r.top(q, 5) {
            let (exact, sketch) = (
                r.exact_score(d, q).expect("candidate"),
                a.scores.score(d, q),
            );
            assert!(
                (exact - sketch).abs() < 1e-4 * sketch.abs().max(1e-6),
                "query {q}: exact {exact} vs sketch {sketch}"
            );
        }
    }
    // Seeded random projections (what a store without factors holds at scale): the same.
    let random = || {
        HookConfig::default()
            .sketch_scheme(influence_core::SketchScheme::Random)
            .k_a(3)
            .k_g(2)
    };
    let bare_rp = tempfile::tempdir().expect("tmp");
    let bare_rp = sketch(&task, &ckpt, bare_rp.path(), random().factors(false));
    let full_rp = tempfile::tempdir().expect("tmp");
    let full_rp = sketch(&task, &ckpt, full_rp.path(), random());
    assert_eq!(
        scores(&task, &bare_rp, &queries, Strategy::Identity).totals,
        scores(&task, &full_rp, &queries, Strategy::Identity).totals
    );
    for strategy in [Strategy::Ekfac, Strategy::Kfac, Strategy::Diagonal] {
        let config = ScoreConfig::default().strategy(strategy);
        let e = analyze(&task, &bare, &queries, &config, &cpu(), &mut |_| {})
            .expect_err("no factors to precondition with");
        let e = e.to_string();
        assert!(
            e.contains(&format!("window {window}"))
                && e.contains("no factors")
                && e.contains("identity"),
            "{strategy:?}: {e}"
        );
    }
}
