//! Whitening before projecting, measured as an upper bound (issue 11's last candidate scheme).
//!
//! With `W = (F + λI)^{-1/2}` the layer's EK-FAC whitening (`F = Q Λ Qᵀ`, `Q = Q_S ⊗ Q_A`, Λ the
//! corrected eigenvalues), the preconditioned score is a plain inner product of whitened
//! gradients, `qᵀ (F + λI)⁻¹ g = (W q)·(W g)`, and a Johnson–Lindenstrauss projection `R` of the
//! whitened space estimates it without bias: `(R W q)·(R W g)`. This module measures that
//! estimate with the most favourable choices a buildable scheme could make — the exact EK-FAC
//! whitening of the checkpoint (Λ from every document), a dense Gaussian `R` (`k × d_out·d_in`,
//! better conditioned than any Kronecker-structured sketch), int8 rows like the default store —
//! applied to the exact per-document gradients of a full-rank store. A training-time version
//! could only do worse: the EK-FAC whitening is not a Kronecker product (`Λ + λ` is not an outer
//! product), so applying it needs the whole per-document gradient, and the hook would have to
//! use the lagged window's factors.

use anyhow::{Context, Result, anyhow, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use influence_analyzer::{Query, ScoreConfig, Strategy, prepare_queries};
use influence_store::{ReadOptions, Store};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::task::GptTask;

/// Scores of the whitened-projection estimate and the exact references it is compared with,
/// `[query][document]` in the order of the `ids` given to [`whitened_scores`].
#[derive(Clone, Debug)]
pub struct Whitened {
    /// `Σ_layers (R W q)·(R W g)`, int8 doc rows.
    pub plain: Vec<Vec<f64>>,
    /// `plain` divided by each document's whole-row norm `‖R W g‖` (the normalised-rows score).
    pub normalised: Vec<Vec<f64>>,
    /// The exact EK-FAC score divided by the exact `‖W g‖` over all layers: the normalised
    /// score in the preconditioned metric, the quantity the eigenbasis scheme's normalised rows
    /// estimate.
    pub exact_normalised: Vec<Vec<f64>>,
    /// Largest `|Σ_l (W q)·(W g) − exact| / max |exact|` over queries: a check that the
    /// whitening here is the analyzer's EK-FAC (it is ~1e-6 in f32).
    pub check: f64,
}

/// Measures the whitened projection with `k` values per layer on `store`, a full-rank
/// (identity-projection) post-hoc store of one window; `exact` are its EK-FAC scores
/// (`config`, plain) as `[query][document]` over `ids`; `R` is drawn from `seed`.
pub fn whitened_scores(
    task: &GptTask,
    store: &Store,
    queries: &[Query],
    config: &ScoreConfig,
    (ids, exact): (&[u64], &[Vec<f64>]),
    (k, seed): (usize, u64),
) -> Result<Whitened> {
    let device = Device::flex();
    let run = store.run();
    ensure!(
        run.projection == influence_core::ProjectionKind::Identity,
        "{}: whitening is simulated on a full-rank store",
        store.dir().display()
    );
    let ekfac = config.clone().strategy(Strategy::Ekfac).normalize(false);
    let pre = prepare_queries(task, store, queries, &ekfac, &device, &mut |_| {})?;
    // Under the identity strategy the "preconditioned" gradients are the raw ones.
    let raw = prepare_queries(
        task,
        store,
        queries,
        &ekfac.clone().strategy(Strategy::Identity),
        &device,
        &mut |_| {},
    )?;
    let ([pre], [raw]) = (pre.as_slice(), raw.as_slice()) else {
        bail!(
            "{}: whitening is simulated on a store of one window",
            store.dir().display()
        );
    };
    let factors = store.factors(pre.window)?;
    let nq = queries.len();
    let pos: std::collections::HashMap<u64, usize> =
        ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let nd = ids.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plain = vec![vec![0.0; nd]; nq];
    let mut exact_whitened = vec![vec![0.0; nd]; nq];
    let mut norm2 = vec![0.0f64; nd];
    let mut exact_norm2 = vec![0.0f64; nd];
    for (l, spec) in run.layers.iter().enumerate() {
        let lf = factors
            .layers
            .iter()
            .find(|f| f.name == spec.name)
            .ok_or_else(|| anyhow!("no factors for layer {}", spec.name))?;
        let (ds, da) = (lf.eig_s.dim, lf.eig_a.dim);
        let n = ds * da;
        ensure!(
            spec.sketch_len() == n,
            "layer {}: {} stored values, factors of {ds}×{da}",
            spec.name,
            spec.sketch_len()
        );
        let lambda = lf
            .corrected
            .as_ref()
            .filter(|c| c.len() == n)
            .ok_or_else(|| anyhow!("layer {}: no corrected eigenvalues", spec.name))?;
        let damping = pre.damping[l];
        let scale: Vec<f32> = lambda
            .iter()
            .map(|&v| (1.0 / (v.max(0.0) + damping).sqrt()) as f32)
            .collect();
        let t2 = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, shape), &device)
        };
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        let q_s = t2(f32s(&lf.eig_s.vectors), [ds, ds]);
        let q_a = t2(f32s(&lf.eig_a.vectors), [da, da]);
        let scale = t2(scale, [1, n]);
        // `Bᵀ X A` for every row of `x` (`b × ds·da`, each row a row-major `ds × da` matrix).
        let sandwich = |x: Tensor<2>, b_: &Tensor<2>, a_: &Tensor<2>| {
            let b = x.dims()[0];
            let y = x.reshape([b * ds, da]).matmul(a_.clone());
            let y = y
                .reshape([b, ds, da])
                .swap_dims(1, 2)
                .reshape([b * da, ds])
                .matmul(b_.clone());
            y.reshape([b, da, ds]).swap_dims(1, 2).reshape([b, n])
        };
        // Rotated into the eigenbasis and whitened: `(Q_Sᵀ X Q_A) ⊘ √(Λ + λ)`.
        let whiten = |x: Tensor<2>| sandwich(x, &q_s, &q_a) * scale.clone();
        // R' = R W: each row of R whitened (W is symmetric), so that R' g = R (W g).
        let gaussian: Vec<f32> = (0..k * n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random(), rng.random());
                ((-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        let r = whiten(t2(gaussian, [k, n]) / (k as f32).sqrt());
        let r_t = sandwich(r, &q_s.clone().transpose(), &q_a.clone().transpose()).transpose();
        let read = |t: Tensor<2>| {
            t.try_into_vec_as::<f32>()
                .map_err(|e| anyhow!("reading a tensor: {e:?}"))
        };
        let query = |v: &[f32]| t2(v.to_vec(), [nq, n]);
        let raw_q = query(
            raw.preconditioned
                .get(l)
                .context("raw query gradients of a layer")?,
        );
        let zq = read(raw_q.clone().matmul(r_t.clone()))?;
        let wq = whiten(raw_q);
        let opts = ReadOptions {
            layers: Some(vec![spec.name.clone()]),
            ..ReadOptions::default()
        };
        for chunk in store.sketches(&opts)? {
            let mut chunk = chunk?;
            let rows = chunk.len();
            let g = t2(std::mem::take(&mut chunk.sketches[0]), [rows, n]);
            let z = read(g.clone().matmul(r_t.clone()))?;
            let wg = whiten(g);
            let exact_dot = read(wg.clone().matmul(wq.clone().transpose()))?;
            let wg2 = read((wg.clone() * wg).sum_dim(1))?;
            for (r, id) in chunk.doc_ids.iter().enumerate() {
                let d = *pos
                    .get(id)
                    .ok_or_else(|| anyhow!("document {id} is not in the corpus"))?;
                // int8 with one absmax scale per row and layer, as the store writes them.
                let row = &z[r * k..(r + 1) * k];
                let step = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                let coded: Vec<f64> = row
                    .iter()
                    .map(|&v| {
                        if step > 0.0 {
                            f64::from((v / step).round() * step)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                norm2[d] += coded.iter().map(|v| v * v).sum::<f64>();
                exact_norm2[d] += f64::from(wg2[r]);
                for q in 0..nq {
                    let zq = &zq[q * k..(q + 1) * k];
                    plain[q][d] += coded
                        .iter()
                        .zip(zq)
                        .map(|(a, b)| a * f64::from(*b))
                        .sum::<f64>();
                    exact_whitened[q][d] += f64::from(exact_dot[r * nq + q]);
                }
            }
        }
    }
    let mut check = 0f64;
    for (got, want) in exact_whitened.iter().zip(exact) {
        let max = want
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        for (g, w) in got.iter().zip(want) {
            check = check.max((g - w).abs() / max);
        }
    }
    // f32 rotations of exact gradients: ~1e-6 here; anything near 1e-3 is a wrong whitening.
    ensure!(
        check < 1e-3,
        "{}: the exact whitened scores differ from EK-FAC by {check:.1e} (relative)",
        store.dir().display()
    );
    let divide = |s: &[Vec<f64>], n2: &[f64]| -> Vec<Vec<f64>> {
        s.iter()
            .map(|row| {
                row.iter()
                    .zip(n2)
                    .map(|(v, n2)| if *n2 > 0.0 { v / n2.sqrt() } else { 0.0 })
                    .collect()
            })
            .collect()
    };
    Ok(Whitened {
        normalised: divide(&plain, &norm2),
        exact_normalised: divide(exact, &exact_norm2),
        plain,
        check,
    })
}
