//! A plain tracked Linear layer: the hook's per-document gradients, sketches, factors and
//! corrected eigenvalues against exact references (autodiff on each document alone, and dense
//! f64 sums on the host), with padding, two documents packed in one sequence, and all three loss
//! reductions.
//!
//! Tolerances: everything on the device is f32; references are f64 sums of the same f32 inputs.
//! Gradients and sketches agree to a relative 1e-5 (a handful of f32 roundings on sums of ≤ 10
//! terms); factors and eigenvalues to 1e-4 (f32 matmuls of ~10 tokens, then an f64
//! eigendecomposition of the f32-accumulated factor).

use burn::module::{Module, Param};
use burn::nn::LinearConfig;
use burn::tensor::{Device, Tensor, TensorData};
use influence_core::{LossReduction, MemorySink, MemoryStore, ProjectionKind};
use influence_hook::{DocRef, FitLabels, FitLoss, Hook, HookConfig, StepBatch, TrackedLinear};
use influence_tests::{linear_grad, project_dense, rel_err, rotate_dense, sketch_of};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::{Arc, Mutex};

const B: usize = 3;
const S: usize = 4;
const D_IN: usize = 5;
const D_OUT: usize = 3;
/// Two documents share sequence 0; sequences 1 and 2 end in padding.
const DOC_INDEX: [i32; B * S] = [0, 0, 1, 1, 2, 2, 2, -1, 3, -1, -1, -1];
const DOCS: usize = 4;

#[derive(Module, Debug)]
struct Net {
    layer: TrackedLinear,
}

/// Inputs, regression targets and loss weights; `scale` applies the loss reduction.
#[derive(Clone, Debug)]
struct Item {
    x: Tensor<3>,
    r: Tensor<3>,
    w: Tensor<3>,
    scale: f64,
    /// Every label draw of a sampled-Fisher fit: the seed and the noise `ε` (`[b, s, d_out]`,
    /// row-major) added to the prediction.
    drawn: DrawLog,
}

/// Seeds and noise of the label draws, shared by an item's clones.
type DrawLog = Arc<Mutex<Vec<(u64, Vec<f32>)>>>;

impl FitLoss<Item> for Net {
    /// `scale · ½ Σ_t w_t ‖y_t − r_t‖²`, with `r_t` the item's targets, or, for sampled labels,
    /// a draw from the model's predictive distribution `N(y_t, I)`: `r_t = y_t + ε_t` with
    /// `ε_t` standard normal from the seed (Box–Muller on the host RNG), so the output gradient
    /// is `−ε_t` whatever the targets.
    fn fit_loss(&self, it: &Item, labels: FitLabels) -> Tensor<1> {
        let y = self.layer.forward(it.x.clone());
        let r = match labels {
            FitLabels::Empirical => it.r.clone(),
            FitLabels::Sampled { seed } => {
                let dims = y.dims();
                let mut rng = StdRng::seed_from_u64(seed);
                let eps: Vec<f32> = (0..dims.iter().product::<usize>())
                    .map(|_| {
                        let (u1, u2): (f64, f64) = (rng.random(), rng.random());
                        ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
                            as f32
                    })
                    .collect();
                let noise = Tensor::from_data(TensorData::new(eps.clone(), dims), &y.device());
                it.drawn.lock().expect("draw log").push((seed, eps));
                y.clone().detach() + noise
            }
        };
        ((y - r).powf_scalar(2.0) * it.w.clone()).sum() * (0.5 * it.scale)
    }
}

struct Fixture {
    device: Device,
    x: Vec<f32>,
    r: Vec<f32>,
    net: Net,
    hook: Hook<Item>,
    sink: MemorySink,
}

fn fixture(config: HookConfig) -> Fixture {
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(5);
    // Padding positions get real (non-zero) inputs too: the hook must mask them.
    let x: Vec<f32> = (0..B * S * D_IN)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let r: Vec<f32> = (0..B * S * D_OUT)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let sink = MemorySink::new();
    let hook = Hook::<Item>::new(config, sink.clone()).expect("config");
    // Weights from the host RNG (burn's device RNG is process-wide; parallel tests share it).
    let mut linear = LinearConfig::new(D_IN, D_OUT).init(&device);
    let w: Vec<f32> = (0..D_IN * D_OUT)
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    let b: Vec<f32> = (0..D_OUT).map(|_| rng.random_range(-0.5..0.5)).collect();
    linear.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w, [D_IN, D_OUT]),
        &device,
    ));
    linear.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [D_OUT]),
        &device,
    )));
    let net = Net {
        layer: TrackedLinear::new(linear, "layer", &hook.tap()),
    };
    Fixture {
        device,
        x,
        r,
        net,
        hook,
        sink,
    }
}

fn item(f: &Fixture, positions: &[usize], scale: f64) -> Item {
    let n = positions.len();
    let pick = |v: &[f32], d: usize| -> Vec<f32> {
        positions
            .iter()
            .flat_map(|&p| v[p * d..(p + 1) * d].to_vec())
            .collect()
    };
    Item {
        x: Tensor::from_data(TensorData::new(pick(&f.x, D_IN), [1, n, D_IN]), &f.device),
        r: Tensor::from_data(TensorData::new(pick(&f.r, D_OUT), [1, n, D_OUT]), &f.device),
        w: Tensor::ones([1, n, 1], &f.device),
        scale,
        drawn: Arc::default(),
    }
}

/// The full batch (with padding weighted 0) and its hook description.
fn batch(f: &Fixture, reduction: LossReduction) -> (Item, StepBatch) {
    let valid = DOC_INDEX.iter().filter(|&&d| d >= 0).count();
    let scale = match reduction {
        LossReduction::Sum => 1.0,
        LossReduction::MeanOverTokens => 1.0 / valid as f64,
        LossReduction::MeanOverSequences => 1.0 / B as f64,
    };
    let w: Vec<f32> = DOC_INDEX
        .iter()
        .map(|&d| if d >= 0 { 1.0 } else { 0.0 })
        .collect();
    let it = Item {
        x: Tensor::from_data(TensorData::new(f.x.clone(), [B, S, D_IN]), &f.device),
        r: Tensor::from_data(TensorData::new(f.r.clone(), [B, S, D_OUT]), &f.device),
        w: Tensor::from_data(TensorData::new(w, [B, S, 1]), &f.device),
        scale,
        drawn: Arc::default(),
    };
    let sb = StepBatch {
        batch_size: B,
        seq_len: S,
        doc_index: DOC_INDEX.to_vec(),
        docs: (0..DOCS as u64)
            .map(|i| DocRef {
                id: 100 + i,
                source: format!("src{}", i % 2),
            })
            .collect(),
        loss_tokens: None,
        token_loss: None,
        loss_multiplier: None,
    };
    (it, sb)
}

/// Arms the hook, runs the forward and backward pass of `it` and captures it as `sb`.
fn captured(f: &Fixture, it: &Item, sb: &StepBatch) -> Result<(), influence_hook::HookError> {
    f.hook.arm();
    let mut grads = f.net.fit_loss(it, FitLabels::Empirical).backward();
    f.hook.capture(&mut grads, sb, it)
}

/// [`captured`], then the end of the step (learning rate 0.1, no parameter update).
fn hooked_step(f: &Fixture, it: &Item, sb: &StepBatch) {
    captured(f, it, sb).expect("capture");
    f.hook.end_step(0.1, &f.net).expect("end step");
}

/// One hooked step (no parameter update, so the checkpoint equals the step's model) and finish.
fn run_step(f: &Fixture, reduction: LossReduction) -> MemoryStore {
    let (it, sb) = batch(f, reduction);
    hooked_step(f, &it, &sb);
    f.hook.finish(&f.net).expect("finish");
    f.sink.store().clone()
}

fn positions(doc: usize) -> Vec<usize> {
    (0..B * S).filter(|&p| DOC_INDEX[p] == doc as i32).collect()
}

/// Exact per-document gradients: autodiff of each document's sum loss, run on that document alone.
fn reference_grads(f: &Fixture) -> Vec<Vec<f64>> {
    (0..DOCS)
        .map(|d| {
            let grads = f
                .net
                .fit_loss(&item(f, &positions(d), 1.0), FitLabels::Empirical)
                .backward();
            linear_grad(&f.net.layer, &grads)
        })
        .collect()
}

fn exact_config(reduction: LossReduction) -> HookConfig {
    HookConfig::default()
        .projection(ProjectionKind::Identity)
        .loss_reduction(reduction)
        .window_steps(1)
        .factor_every(1)
        .fit_batches(1)
}

#[test]
fn per_document_gradients_equal_autodiff_alone_for_every_reduction() {
    for reduction in [
        LossReduction::Sum,
        LossReduction::MeanOverTokens,
        LossReduction::MeanOverSequences,
    ] {
        let f = fixture(exact_config(reduction));
        let store = run_step(&f, reduction);
        let reference = reference_grads(&f);
        let len = D_OUT * (D_IN + 1);
        for (d, want) in reference.iter().enumerate() {
            let got = sketch_of(&store.batches, 0, 100 + d as u64, len);
            let e = rel_err(&got, want);
            assert!(e < 1e-5, "{reduction:?} doc {d}: relative error {e}");
        }
        let rows = &store.batches[0].rows;
        assert_eq!(
            rows.iter().map(|r| r.tokens).collect::<Vec<_>>(),
            [2, 2, 3, 1]
        );
        assert_eq!(rows[1].source, "src1");
    }
}

#[test]
fn factors_equal_brute_force_sums_and_eigenvalues_the_brute_force_mean() {
    let f = fixture(exact_config(LossReduction::MeanOverTokens));
    let store = run_step(&f, LossReduction::MeanOverTokens);
    let layer = &store.windows[0].layers[0];

    // Brute force in f64: a_t with the bias 1, g_t = y_t − r_t (the sum loss's output gradient).
    let (a_ref, s_ref) = empirical_factors(&f);
    let valid = DOC_INDEX.iter().filter(|&&d| d >= 0).count();
    assert!(
        rel_err(&layer.a, &a_ref) < 1e-5,
        "A: {}",
        rel_err(&layer.a, &a_ref)
    );
    assert!(
        rel_err(&layer.s, &s_ref) < 1e-5,
        "S: {}",
        rel_err(&layer.s, &s_ref)
    );
    assert_eq!(layer.tokens, valid as u64);
    assert!((layer.tokens_per_example - valid as f64 / DOCS as f64).abs() < 1e-12);

    // Λ_ij = mean_n (Q_Sᵀ G_n Q_A)_ij² over the re-run documents (all four here).
    let reference = reference_grads(&f);
    let mut lam_ref = vec![0.0; D_OUT * (D_IN + 1)];
    for g in &reference {
        for (l, v) in lam_ref
            .iter_mut()
            .zip(rotate_dense(g, &layer.eig_s, &layer.eig_a))
        {
            *l += v * v / DOCS as f64;
        }
    }
    let lam = layer.corrected.as_ref().expect("corrected eigenvalues");
    assert_eq!(layer.corrected_examples, DOCS as u64);
    let e = rel_err(lam, &lam_ref);
    assert!(e < 1e-4, "Λ relative error {e}");
    // Rotation invariance: Σ Λ = mean_n ‖G_n‖².
    let trace: f64 = reference
        .iter()
        .map(|g| g.iter().map(|v| v * v).sum::<f64>())
        .sum::<f64>()
        / DOCS as f64;
    assert!((lam.iter().sum::<f64>() - trace).abs() < 1e-4 * trace);
}

#[test]
fn kfac_fallback_without_a_fit_pass() {
    let f = fixture(exact_config(LossReduction::Sum).fit_batches(0));
    let store = run_step(&f, LossReduction::Sum);
    let layer = &store.windows[0].layers[0];
    assert!(layer.corrected.is_none());
    let tpe = influence_ekfac::tokens_per_example(layer);
    assert!((tpe - 8.0 / 4.0).abs() < 1e-12);
    let lam = influence_ekfac::kfac_eigenvalues(&layer.eig_s, &layer.eig_a, tpe);
    for (i, ls) in layer.eig_s.values.iter().enumerate() {
        for (j, la) in layer.eig_a.values.iter().enumerate() {
            let want = tpe * ls.max(0.0) * la.max(0.0);
            assert!((lam[i * (D_IN + 1) + j] - want).abs() <= 1e-12 * want.abs().max(1.0));
        }
    }
    // The EK-FAC preconditioner falls back to exactly these eigenvalues.
    let g = vec![1.0; D_OUT * (D_IN + 1)];
    let damping = influence_ekfac::Damping::Absolute(0.5);
    let ek = influence_ekfac::Preconditioner::new(layer, influence_ekfac::Strategy::Ekfac, damping)
        .expect("ekfac");
    let kf = influence_ekfac::Preconditioner::new(layer, influence_ekfac::Strategy::Kfac, damping)
        .expect("kfac");
    assert_eq!(ek.apply(&g).expect("apply"), kf.apply(&g).expect("apply"));
}

#[test]
fn sketches_equal_dense_projections_of_exact_gradients() {
    for kind in [ProjectionKind::Rademacher, ProjectionKind::Gaussian] {
        let config = exact_config(LossReduction::MeanOverTokens)
            .sketch_scheme(influence_core::SketchScheme::Random)
            .projection(kind)
            .k_a(4)
            .k_g(2)
            .projection_seed(99);
        let f = fixture(config);
        let store = run_step(&f, LossReduction::MeanOverTokens);
        let run = store.run.as_ref().expect("run info");
        // The projections are regenerated from the seed alone.
        let (pa, pg) = run.projections(0).expect("projections");
        assert_eq!((pa.d, pa.k, pg.d, pg.k), (D_IN + 1, 4, D_OUT, 2));
        for (d, g) in reference_grads(&f).iter().enumerate() {
            let want = project_dense(g, &pg.values, &pa.values, D_OUT, D_IN + 1, 2, 4);
            let got = sketch_of(&store.batches, 0, 100 + d as u64, 8);
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "{kind:?} doc {d}: {e}");
        }
    }
}

#[test]
fn token_subsample_and_schedule_count_tokens() {
    let config = exact_config(LossReduction::Sum)
        .factor_token_fraction(0.5)
        .window_steps(3)
        .factor_every(2)
        .fit_batches(0);
    let f = fixture(config);
    for _ in 0..3 {
        let (it, sb) = batch(&f, LossReduction::Sum);
        hooked_step(&f, &it, &sb);
    }
    f.hook.finish(&f.net).expect("finish");
    let store = f.sink.store();
    assert_eq!(store.windows.len(), 1);
    assert_eq!(store.windows[0].learning_rates, vec![0.1; 3]);
    // Factor steps 0 and 2, each ⌈8 × 0.5⌉ = 4 of the 8 document tokens.
    assert_eq!(store.windows[0].layers[0].tokens, 8);
    assert_eq!(store.rows(), 3 * DOCS);
    assert_eq!(store.checkpoints.len(), 1);
}

#[test]
fn bad_batches_and_call_order_are_reported() {
    let f = fixture(exact_config(LossReduction::Sum));
    let (it, mut sb) = batch(&f, LossReduction::Sum);
    sb.doc_index[0] = 9;
    let e = captured(&f, &it, &sb).expect_err("bad doc index");
    assert!(e.to_string().contains("doc_index[0] = 9"), "{e}");
    // The hook stays failed and says why.
    let e = f.hook.finish(&f.net).expect_err("failed");
    assert!(e.to_string().contains("doc_index"), "{e}");

    // A StepBatch that is not the batch the model ran on (its sequences are longer): the
    // error names the layer and both shapes.
    let f = fixture(exact_config(LossReduction::Sum));
    let (it, mut sb) = batch(&f, LossReduction::Sum);
    sb.batch_size = 2;
    sb.seq_len = 6;
    let e = captured(&f, &it, &sb).expect_err("shape mismatch");
    assert!(
        e.to_string()
            .contains("layer layer: its input is [3, 4, 5]")
            && e.to_string().contains("2 × 6"),
        "{e}"
    );

    let f = fixture(exact_config(LossReduction::Sum));
    let (it, sb) = batch(&f, LossReduction::Sum);
    let mut grads = f.net.fit_loss(&it, FitLabels::Empirical).backward();
    let e = f.hook.capture(&mut grads, &sb, &it).expect_err("not armed");
    assert!(e.to_string().contains("arm()"), "{e}");
}

/// The true-Fisher fit: the window's re-run draws its labels from the model (`N(y, I)` here),
/// and S and Λ must be those of the drawn labels' gradients `−ε_t`, not the training labels'.
/// Brute force on the host from the logged draws; A stays the training tokens' (it does not
/// depend on labels). The test fails if the fit used the empirical labels: the two S differ by
/// far more than the tolerance (asserted).
#[test]
fn sampled_fisher_fit_uses_the_labels_drawn_from_the_model() {
    let config = exact_config(LossReduction::MeanOverTokens);
    let seed = config.seed;
    let f = fixture(config.fisher(influence_core::FisherLabels::Sampled));
    let (it, sb) = batch(&f, LossReduction::MeanOverTokens);
    hooked_step(&f, &it, &sb);
    f.hook.finish(&f.net).expect("finish");
    let store = f.sink.store().clone();
    let layer = &store.windows[0].layers[0];
    let drawn = it.drawn.lock().expect("draw log").clone();
    // One re-run batch (fit_batches 1) in window 0: seed `config.seed ^ (0 << 32) + 0`.
    assert_eq!(drawn.len(), 1, "one draw per re-run batch");
    let (drawn_seed, eps) = &drawn[0];
    assert_eq!(*drawn_seed, seed);

    let da = D_IN + 1;
    let valid: Vec<usize> = (0..B * S).filter(|&p| DOC_INDEX[p] >= 0).collect();
    let g = |p: usize, o: usize| -f64::from(eps[p * D_OUT + o]);
    let mut s_ref = vec![0.0; D_OUT * D_OUT];
    for &p in &valid {
        for i in 0..D_OUT {
            for j in 0..D_OUT {
                s_ref[i * D_OUT + j] += g(p, i) * g(p, j) / valid.len() as f64;
            }
        }
    }
    let e = rel_err(&layer.s, &s_ref);
    assert!(e < 1e-5, "S against the drawn labels: {e}");
    let (_, s_emp) = empirical_factors(&f);
    assert!(
        rel_err(&s_emp, &s_ref) > 1e-2,
        "the drawn and the training labels must give different S for this test to mean anything"
    );

    // Λ_ij = mean_n (Q_Sᵀ G̃_n Q_A)²_ij, G̃_n = Σ_{t∈n} g_t ã_tᵀ with the drawn labels' g_t.
    let mut lam_ref = vec![0.0; D_OUT * da];
    for doc in 0..DOCS {
        let mut gn = vec![0.0; D_OUT * da];
        for p in positions(doc) {
            for o in 0..D_OUT {
                for i in 0..da {
                    let a = if i < D_IN {
                        f64::from(f.x[p * D_IN + i])
                    } else {
                        1.0
                    };
                    gn[o * da + i] += g(p, o) * a;
                }
            }
        }
        for (l, v) in lam_ref
            .iter_mut()
            .zip(rotate_dense(&gn, &layer.eig_s, &layer.eig_a))
        {
            *l += v * v / DOCS as f64;
        }
    }
    let lam = layer.corrected.as_ref().expect("corrected eigenvalues");
    let e = rel_err(lam, &lam_ref);
    assert!(e < 1e-4, "Λ against the drawn labels: {e}");
}

/// The layer's weight (`[d_in, d_out]`, row-major) and bias on the host.
fn host_params(f: &Fixture) -> (Vec<f64>, Vec<f64>) {
    let layer = &f.net.layer.linear;
    let bias = layer.bias.as_ref().expect("bias").val().reshape([1, D_OUT]);
    (
        influence_tests::host(layer.weight.val()),
        influence_tests::host(bias),
    )
}

/// The brute-force A and S (f64) of the fixture's training batch: `ã_t = (x_t, 1)` and
/// `g_t = y_t − r_t` over the valid tokens, each divided by their count.
fn empirical_factors(f: &Fixture) -> (Vec<f64>, Vec<f64>) {
    let (w, bias) = host_params(f);
    let da = D_IN + 1;
    let (mut a_ref, mut s_ref) = (vec![0.0; da * da], vec![0.0; D_OUT * D_OUT]);
    let valid: Vec<usize> = (0..B * S).filter(|&p| DOC_INDEX[p] >= 0).collect();
    for &p in &valid {
        let mut a: Vec<f64> = f.x[p * D_IN..(p + 1) * D_IN]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        a.push(1.0);
        let g: Vec<f64> = (0..D_OUT)
            .map(|o| {
                let y: f64 = bias[o] + (0..D_IN).map(|i| a[i] * w[i * D_OUT + o]).sum::<f64>();
                y - f64::from(f.r[p * D_OUT + o])
            })
            .collect();
        for i in 0..da {
            for j in 0..da {
                a_ref[i * da + j] += a[i] * a[j] / valid.len() as f64;
            }
        }
        for i in 0..D_OUT {
            for j in 0..D_OUT {
                s_ref[i * D_OUT + j] += g[i] * g[j] / valid.len() as f64;
            }
        }
    }
    (a_ref, s_ref)
}

/// KFAC's absolute scale. The per-token factors give `S ⊗ A`, a per-*token* Fisher; the Fisher
/// the influence needs is per *example*, `F = mean_n vec(G_n) vec(G_n)ᵀ`, which KFAC
/// approximates as `c · S ⊗ A` with `c` the tokens per example. The batch here is built so that
/// this is exact: every token's input is one of two vectors `a₁, a₂` (four tokens each), each
/// document's first token carries one of two output gradients `g₁, g₂` and its other tokens
/// none (targets equal to the prediction), with the four (a, g) pairs on the four documents.
/// Then `F = ¼ (Σ g gᵀ) ⊗ (Σ ã ãᵀ) = c · S ⊗ A` with `c = 8 tokens / 4 documents = 2`. The test
/// builds F densely from autodiff gradients of each document alone and compares it entrywise
/// with `c · S ⊗ A` from the stored factors and the stored `c`; the KFAC eigenvalues must then
/// equal the EK-FAC ones fitted on the same documents. A wrong `c` (per sequence, 8/3, or with
/// padding counted, 12/4) fails by 33 % or more; `c = 1` is asserted to fail.
#[test]
fn kfac_scale_is_the_dense_per_example_fisher_when_kronecker_is_exact() {
    let mut f = fixture(exact_config(LossReduction::MeanOverTokens));
    let mut rng = StdRng::seed_from_u64(11);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (a1, a2, g1, g2) = (draw(D_IN), draw(D_IN), draw(D_OUT), draw(D_OUT));
    let zero = vec![0.0f32; D_OUT];
    // Position → (input, output gradient), per DOC_INDEX: docs [0,1], [2,3], [4,5,6], [8].
    let plan: [(usize, &[f32], &[f32]); 8] = [
        (0, &a1, &g1),
        (1, &a2, &zero),
        (2, &a1, &g2),
        (3, &a2, &zero),
        (4, &a2, &g1),
        (5, &a1, &zero),
        (6, &a1, &zero),
        (8, &a2, &g2),
    ];
    let (w, bias) = host_params(&f);
    for (p, a, g) in plan {
        f.x[p * D_IN..(p + 1) * D_IN].copy_from_slice(a);
        for o in 0..D_OUT {
            let y = bias[o]
                + (0..D_IN)
                    .map(|i| f64::from(a[i]) * w[i * D_OUT + o])
                    .sum::<f64>();
            f.r[p * D_OUT + o] = (y - f64::from(g[o])) as f32;
        }
    }
    let store = run_step(&f, LossReduction::MeanOverTokens);
    let layer = &store.windows[0].layers[0];
    let c = influence_ekfac::tokens_per_example(layer);
    assert!((c - 2.0).abs() < 1e-12, "tokens per example {c}");

    let da = D_IN + 1;
    let n = D_OUT * da;
    let reference = reference_grads(&f);
    let mut dense = vec![0.0; n * n];
    for g in &reference {
        for i in 0..n {
            for j in 0..n {
                dense[i * n + j] += g[i] * g[j] / DOCS as f64;
            }
        }
    }
    let kron = |c: f64| -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for (o, i) in (0..D_OUT).flat_map(|o| (0..da).map(move |i| (o, i))) {
            for (p, j) in (0..D_OUT).flat_map(|p| (0..da).map(move |j| (p, j))) {
                out[(o * da + i) * n + p * da + j] =
                    c * layer.s[o * D_OUT + p] * layer.a[i * da + j];
            }
        }
        out
    };
    let e = rel_err(&kron(c), &dense);
    assert!(
        e < 1e-5,
        "c · S ⊗ A against the dense per-example Fisher: {e}"
    );
    let e1 = rel_err(&kron(1.0), &dense);
    assert!(
        e1 > 0.3,
        "the per-token scale (c = 1) must be visibly wrong: {e1}"
    );

    let kfac = influence_ekfac::kfac_eigenvalues(&layer.eig_s, &layer.eig_a, c);
    let ekfac = layer.corrected.as_ref().expect("corrected eigenvalues");
    let e = rel_err(&kfac, ekfac);
    assert!(
        e < 1e-4,
        "KFAC against EK-FAC eigenvalues where Kronecker is exact: {e}"
    );
}

/// Eigenbasis sketches: the first window's basis is fitted on its first batch (warm-up), later
/// windows use the previous window's factors; every stored row is the exact gradient's
/// coordinates `(P_gᵀ G_n P_a)[c]` in the recorded basis, and the recorded second moment is the
/// mean square of the window's rows (tolerance as for the random sketches: f32 on the device).
#[test]
fn eigenbasis_sketches_are_coordinates_of_exact_gradients_in_the_recorded_basis() {
    use influence_core::{CoordinateSelection, SketchScheme};
    let config = exact_config(LossReduction::MeanOverTokens)
        .projection(ProjectionKind::Rademacher)
        .k_a(3)
        .k_g(2)
        .sketch_scheme(SketchScheme::Eigenbasis {
            select: CoordinateSelection::Eigenvalue,
            max_side: 3,
        });
    let f = fixture(config);
    let (it, sb) = batch(&f, LossReduction::MeanOverTokens);
    for _ in 0..2 {
        hooked_step(&f, &it, &sb);
    }
    f.hook.finish(&f.net).expect("finish");
    let store = f.sink.store().clone();
    assert_eq!(store.windows.len(), 2);
    let reference = reference_grads(&f);
    for (w, window) in store.windows.iter().enumerate() {
        let basis = window.layers[0]
            .sketch_basis
            .as_ref()
            .expect("eigenbasis windows record their basis");
        assert_eq!(basis.from_window, 0, "window {w}");
        assert_eq!((basis.coords.len(), basis.rows), (6, DOCS as u64));
        let batch = &store.batches[w];
        let mut square = [0.0f64; 6];
        for (d, g) in reference.iter().enumerate() {
            let want = influence_ekfac::basis_coordinates(basis, g, D_OUT, D_IN + 1);
            let row = batch
                .rows
                .iter()
                .position(|r| r.doc_id == 100 + d as u64)
                .expect("row");
            let got: Vec<f64> = batch
                .sketch(0, row, 6)
                .expect("sketch")
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "window {w} doc {d}: {e}");
            for (s, v) in square.iter_mut().zip(&got) {
                *s += v * v / DOCS as f64;
            }
        }
        let moment = basis.second_moment.as_ref().expect("closed window");
        assert!(rel_err(moment, &square) < 1e-5, "window {w}");
    }
    // Window 1's basis is window 0's eigenbasis, chosen by its corrected eigenvalues.
    let mut w0 = store.windows[0].layers[0].clone();
    w0.sketch_basis = None;
    let lagged = influence_ekfac::eigen_sketch_basis(&w0, 0, 6, CoordinateSelection::Eigenvalue, 3)
        .expect("basis");
    let got = store.windows[1].layers[0]
        .sketch_basis
        .as_ref()
        .expect("basis");
    assert_eq!(
        (&got.coords, &got.p_a, &got.p_g),
        (&lagged.coords, &lagged.p_a, &lagged.p_g)
    );
}

/// A padding-only batch (every position −1, no documents) leaves the factors, the token counts
/// and the rows exactly as if the step had not been there, for every loss reduction (with the
/// mean over tokens its loss is 0/0 and its gradients NaN): two full steps with an empty one
/// between them give the factors of the two full steps.
#[test]
fn padding_only_batches_leave_factors_and_rows_as_if_absent() {
    for reduction in [
        LossReduction::Sum,
        LossReduction::MeanOverTokens,
        LossReduction::MeanOverSequences,
    ] {
        let run = |with_padding: bool| {
            let steps = if with_padding { 3 } else { 2 };
            let config = exact_config(reduction)
                .window_steps(steps)
                .factor_every(1)
                .fit_batches(0);
            let f = fixture(config);
            for step in 0..steps {
                let (mut it, mut sb) = batch(&f, reduction);
                if with_padding && step == 1 {
                    sb.doc_index = vec![-1; B * S];
                    sb.docs.clear();
                    it.w = Tensor::zeros([B, S, 1], &f.device);
                    if reduction == LossReduction::MeanOverTokens {
                        it.scale = f64::NAN; // 1 / 0 tokens, as a mean loss would divide
                    }
                }
                hooked_step(&f, &it, &sb);
            }
            f.hook.finish(&f.net).expect("finish");
            f.sink.store().clone()
        };
        let (plain, padded) = (run(false), run(true));
        assert_eq!(padded.rows(), plain.rows(), "{reduction:?}: rows");
        assert_eq!(padded.windows.len(), 1);
        let (p, q) = (&plain.windows[0].layers[0], &padded.windows[0].layers[0]);
        assert_eq!(q.tokens, p.tokens, "{reduction:?}: factor tokens");
        assert_eq!(q.tokens_per_example, p.tokens_per_example);
        assert!(
            rel_err(&q.a, &p.a) < 1e-6 && rel_err(&q.s, &p.s) < 1e-6,
            "{reduction:?}: factors {} {}",
            rel_err(&q.a, &p.a),
            rel_err(&q.s, &p.s)
        );
        assert!(q.a.iter().chain(&q.s).all(|v| v.is_finite()));
    }
}

/// One step in which document 0 (sharing sequence 0 with document 1) has a NaN input.
/// Returns the hook's outcome and what it stored.
fn nan_step(
    config: HookConfig,
    steps: usize,
) -> (Result<(), influence_hook::HookError>, MemoryStore) {
    let mut f = fixture(config);
    f.x[0] = f32::NAN; // document 0's first token, feature 0
    for _ in 0..steps {
        let (it, sb) = batch(&f, LossReduction::Sum);
        let outcome =
            captured(&f, &it, &sb).and_then(|()| f.hook.end_step(0.1, &f.net).map(|_| ()));
        if outcome.is_err() {
            return (outcome, f.sink.store().clone());
        }
    }
    let outcome = f.hook.finish(&f.net).map(|_| ());
    (outcome, f.sink.store().clone())
}

/// The non-finite policy. `skip` (the default): the document with a NaN input is left out of
/// the step — no row, not in the factors, recorded with its layer — while document 1, packed
/// in the same sequence, keeps its exact gradient (NaN is zeroed by selection: a mask by
/// multiplication would give 0 × NaN = NaN in its per-document sum) and the factors equal those
/// of the step with document 0 as padding. `fail` stops at the first NaN naming step, document
/// and layer; `skip` fails past `max_fraction`, and after `max_bad_steps` steps with every
/// document skipped.
#[test]
fn non_finite_documents_are_skipped_or_fail_by_policy() {
    let config = exact_config(LossReduction::Sum).fit_batches(0);
    let (ok, store) = nan_step(config.clone(), 1);
    ok.expect("skip is the default");
    let ids: Vec<u64> = store.batches[0].rows.iter().map(|r| r.doc_id).collect();
    assert_eq!(ids, vec![101, 102, 103], "document 100 left out");
    assert_eq!(
        store.batches[0].skipped,
        vec![influence_core::SkippedRow {
            step: 0,
            doc_id: 100,
            layer: "layer".into(),
            value: "input".into(),
        }]
    );
    let clean = fixture(config.clone());
    let want = reference_grads(&clean);
    let len = D_OUT * (D_IN + 1);
    for (d, want) in want.iter().enumerate().skip(1) {
        let got = sketch_of(&store.batches, 0, 100 + d as u64, len);
        let e = rel_err(&got, want);
        assert!(e < 1e-5, "doc {d}: {e}");
        assert!(got.iter().all(|v| v.is_finite()));
    }
    // The factors: those of the same step with document 0 as padding.
    let reference = {
        let (it, mut sb) = batch(&clean, LossReduction::Sum);
        for d in &mut sb.doc_index {
            if *d == 0 {
                *d = -1;
            }
        }
        let mut it = it;
        let w: Vec<f32> = sb
            .doc_index
            .iter()
            .map(|&d| if d >= 0 { 1.0 } else { 0.0 })
            .collect();
        it.w = Tensor::from_data(TensorData::new(w, [B, S, 1]), &clean.device);
        hooked_step(&clean, &it, &sb);
        clean.hook.finish(&clean.net).expect("finish");
        clean.sink.store().clone()
    };
    let (p, q) = (&reference.windows[0].layers[0], &store.windows[0].layers[0]);
    assert_eq!(q.tokens, p.tokens);
    assert!(rel_err(&q.a, &p.a) < 1e-6 && rel_err(&q.s, &p.s) < 1e-6);

    // A batch with a skipped document is not kept for the window fit (its re-run would put the
    // NaN into the corrected eigenvalues): the window closes, with the KFAC fallback here.
    let (ok, store) = nan_step(config.clone().fit_batches(1), 1);
    ok.expect("the fit pass leaves the NaN batch out");
    assert!(store.windows[0].layers[0].corrected.is_none());

    use influence_hook::NonFinitePolicy;
    let (err, _) = nan_step(config.clone().non_finite(NonFinitePolicy::Fail), 1);
    let err = err.expect_err("fail").to_string();
    assert!(
        err.contains("step 0: document 100: layer layer: the input"),
        "{err}"
    );
    let strict = NonFinitePolicy::Skip {
        max_fraction: 0.2,
        min_rows: 1,
        max_bad_steps: 3,
    };
    let (err, _) = nan_step(config.clone().non_finite(strict), 1);
    let err = err.expect_err("1 of 4 > 0.2").to_string();
    assert!(
        err.contains("1 of 4 documents") && err.contains("max_fraction"),
        "{err}"
    );

    // Every document NaN (the weights themselves): fails on the second such step.
    let diverged = NonFinitePolicy::Skip {
        max_fraction: 1.0,
        min_rows: 0,
        max_bad_steps: 2,
    };
    let f = fixture(config.window_steps(4).non_finite(diverged));
    let mut outcome = Ok(());
    for _ in 0..2 {
        let (mut it, sb) = batch(&f, LossReduction::Sum);
        it.x = it.x.clone() * f32::NAN;
        outcome = captured(&f, &it, &sb);
        if outcome.is_ok() {
            f.hook.end_step(0.1, &f.net).expect("end step");
        }
    }
    let err = outcome.expect_err("diverged").to_string();
    assert!(err.contains("2 consecutive steps"), "{err}");
}

/// Gradient accumulation: one optimizer step of two micro-batches, each loss a mean over its
/// own tokens multiplied by ½ (divided by the two micro-batches, as accumulation does), passed
/// as `loss_multiplier`. The second micro-batch's document has the same id as one of the
/// first's (a document longer than a sequence, chunked across micro-batches). The step gets
/// one row per document, each equal to autodiff of that document's sum loss alone, the split
/// document's the sum of its parts; the factors count every token once. Without the
/// multiplier the rows are off by the factor 2, so the check can fail.
#[test]
fn gradient_accumulation_merges_micro_batches_into_one_row_per_document() {
    let micro = |f: &Fixture, multiplier: Option<f32>| -> MemoryStore {
        // Micro-batch 1: documents 0, 1, 2 (positions 0–6); micro-batch 2: position 8, which
        // belongs to document 3 in the fixture and is here a chunk of document 102.
        let parts: [(&[usize], &[i32], &[u64]); 2] = [
            (
                &[0, 1, 2, 3, 4, 5, 6],
                &[0, 0, 1, 1, 2, 2, 2],
                &[100, 101, 102],
            ),
            (&[8], &[0], &[102]),
        ];
        for (positions, doc_index, ids) in parts {
            // The loss is always divided by two: only the multiplier tells the hook.
            let it = item(f, positions, 0.5 / positions.len() as f64);
            let sb = StepBatch {
                batch_size: 1,
                seq_len: positions.len(),
                doc_index: doc_index.to_vec(),
                docs: ids
                    .iter()
                    .map(|&id| DocRef {
                        id,
                        source: "src".into(),
                    })
                    .collect(),
                loss_tokens: None,
                token_loss: None,
                loss_multiplier: multiplier,
            };
            captured(f, &it, &sb).expect("capture");
        }
        f.hook.end_step(0.1, &f.net).expect("end step");
        f.hook.finish(&f.net).expect("finish");
        f.sink.store().clone()
    };
    let f = fixture(exact_config(LossReduction::MeanOverTokens));
    let store = micro(&f, Some(0.5));
    let reference = reference_grads(&f);
    let len = D_OUT * (D_IN + 1);
    assert_eq!(store.batches.len(), 1, "one step");
    let rows = &store.batches[0].rows;
    assert_eq!(
        rows.iter()
            .map(|r| (r.doc_id, r.tokens))
            .collect::<Vec<_>>(),
        [(100, 2), (101, 2), (102, 4)],
        "one row per document, the split one with all its tokens"
    );
    let split: Vec<f64> = reference[2]
        .iter()
        .zip(&reference[3])
        .map(|(a, b)| a + b)
        .collect();
    for (id, want) in [(100, &reference[0]), (101, &reference[1]), (102, &split)] {
        let got = sketch_of(&store.batches, 0, id, len);
        let e = rel_err(&got, want);
        assert!(e < 1e-5, "document {id}: relative error {e}");
    }
    assert_eq!(store.windows[0].layers[0].tokens, 8, "every token once");
    // Without the multiplier the gradients are half what they should be.
    let f = fixture(exact_config(LossReduction::MeanOverTokens));
    let wrong = micro(&f, None);
    let e = rel_err(&sketch_of(&wrong.batches, 0, 100, len), &reference[0]);
    assert!(e > 0.4, "the multiplier must matter: {e}");
    // A multiplier that is not finite and positive is refused, naming the field.
    let f = fixture(exact_config(LossReduction::MeanOverTokens));
    let (it, mut sb) = batch(&f, LossReduction::MeanOverTokens);
    sb.loss_multiplier = Some(0.0);
    let e = captured(&f, &it, &sb).expect_err("zero multiplier");
    assert!(e.to_string().contains("loss_multiplier"), "{e}");
}
