//! Shared helpers of the integration tests: dense references in f64 on the host.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};
use influence_core::{Eigenbasis, SketchBatch};
use influence_hook::TrackedLinear;

/// Values of a tensor as f64.
pub fn host(t: Tensor<2>) -> Vec<f64> {
    t.try_into_vec_as::<f32>()
        .expect("read tensor")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The per-example gradient `G` (`d_out × d_in_aug`, row-major) of a tracked layer from autodiff:
/// burn stores `W` as `[d_in, d_out]`, so `G[o][i] = W.grad[i][o]` and `G[o][d_in] = b.grad[o]`.
pub fn linear_grad(layer: &TrackedLinear, grads: &Gradients) -> Vec<f64> {
    let w = layer
        .linear
        .weight
        .val()
        .grad(grads)
        .expect("weight gradient");
    let [d_in, d_out] = w.dims();
    let w = host(w);
    let b = layer.linear.bias.as_ref().map(|b| {
        host(
            b.val()
                .grad(grads)
                .expect("bias gradient")
                .reshape([1, d_out]),
        )
    });
    let da = d_in + usize::from(b.is_some());
    let mut g = vec![0.0; d_out * da];
    for o in 0..d_out {
        for i in 0..d_in {
            g[o * da + i] = w[i * d_out + o];
        }
        if let Some(b) = &b {
            g[o * da + d_in] = b[o];
        }
    }
    g
}

/// Largest absolute difference relative to the largest magnitude of the reference.
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// `P_gᵀ G P_a` densely: `G` is `d_out × d_in`, `P_g` is `d_out × k_g`, `P_a` is `d_in × k_a`.
pub fn project_dense(
    g: &[f64],
    pg: &[f32],
    pa: &[f32],
    d_out: usize,
    d_in: usize,
    kg: usize,
    ka: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; kg * ka];
    for i in 0..kg {
        for j in 0..ka {
            let mut acc = 0.0;
            for o in 0..d_out {
                for c in 0..d_in {
                    acc += f64::from(pg[o * kg + i]) * g[o * d_in + c] * f64::from(pa[c * ka + j]);
                }
            }
            out[i * ka + j] = acc;
        }
    }
    out
}

/// `Q_Sᵀ G Q_A` densely.
pub fn rotate_dense(g: &[f64], qs: &Eigenbasis, qa: &Eigenbasis) -> Vec<f64> {
    let (ds, da) = (qs.dim, qa.dim);
    let mut tmp = vec![0.0; ds * da]; // Q_Sᵀ G
    for i in 0..ds {
        for c in 0..da {
            tmp[i * da + c] = (0..ds)
                .map(|o| qs.vectors[o * ds + i] * g[o * da + c])
                .sum();
        }
    }
    let mut out = vec![0.0; ds * da];
    for i in 0..ds {
        for j in 0..da {
            out[i * da + j] = (0..da)
                .map(|c| tmp[i * da + c] * qa.vectors[c * da + j])
                .sum();
        }
    }
    out
}

/// The sketch of document `doc_id` in layer `layer` from a list of batches (f64).
pub fn sketch_of(batches: &[SketchBatch], layer: usize, doc_id: u64, len: usize) -> Vec<f64> {
    let mut found = None;
    for b in batches {
        for (r, row) in b.rows.iter().enumerate() {
            if row.doc_id == doc_id {
                assert!(found.is_none(), "document {doc_id} sketched twice");
                found = Some(
                    b.sketch(layer, r, len)
                        .expect("sketch")
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect(),
                );
            }
        }
    }
    found.unwrap_or_else(|| panic!("document {doc_id} not sketched"))
}

/// Every float parameter of a module, flattened, in visiting order.
pub fn parameters<M: Module>(m: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.extend(
                p.val()
                    .to_data()
                    .try_to_vec::<f32>()
                    .expect("f32 parameter"),
            );
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

pub mod tasks;

/// Solves `M x = b` for a symmetric positive definite `n × n` row-major `M` (Cholesky, f64).
pub fn spd_solve(m: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = m[i * n + i] - s;
                assert!(d > 0.0, "matrix not positive definite at {i}");
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (m[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

/// Pearson correlation.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    pearson(&ranks(a), &ranks(b))
}
