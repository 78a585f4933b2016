//! Queries: reading them, their exact gradients at a checkpoint, and their preconditioned,
//! projected form ready for scoring.

use std::collections::HashSet;
use std::path::Path;

use burn::tensor::Device;
use influence_core::{LayerSpec, ProjectionKind, RunInfo, WindowRecord};
use influence_ekfac::{
    Damping, Preconditioner, Strategy, SubspacePreconditioner, check_basis, low_rank,
};
use influence_hook::Probe;
use influence_store::Store;

use crate::config::ScoreConfig;
use crate::task::{Query, Task};
use crate::{AnalyzerError, TaskError};

/// Reads a JSON-lines file of queries (`{"id", "prompt", "completion", …}` per line; blank lines
/// skipped). Errors name the line; ids must be unique and completions non-empty.
pub fn read_queries(path: &Path) -> Result<Vec<Query>, AnalyzerError> {
    let text = std::fs::read_to_string(path).map_err(AnalyzerError::io(path))?;
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    let err = |line: usize, message: String| AnalyzerError::Query {
        path: path.to_path_buf(),
        line,
        message,
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Query = serde_json::from_str(line).map_err(|e| err(i + 1, e.to_string()))?;
        if q.completion.is_empty() {
            return Err(err(i + 1, format!("query {:?}: empty completion", q.id)));
        }
        if !ids.insert(q.id.clone()) {
            return Err(err(i + 1, format!("duplicate query id {:?}", q.id)));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(err(0, "no queries in the file".into()));
    }
    Ok(out)
}

/// Exact gradients of the query losses `−log p(completion | prompt)` at one checkpoint.
#[derive(Clone, Debug)]
pub struct QueryGradients {
    /// Tracked layers, in the store's order.
    pub layers: Vec<LayerSpec>,
    /// Per layer: `queries × d_out × d_in_aug`, row-major.
    pub grads: Vec<Vec<f64>>,
    /// Per query: `−log p(completion | prompt)` in nats.
    pub nats: Vec<f64>,
}

/// Builds the model of `window`'s checkpoint with a probe on the store's layers, checking that
/// the model's tracked layers are the store's.
pub fn load_window_model<T: Task>(
    task: &T,
    store: &Store,
    window: u32,
    device: &Device,
) -> Result<(T::Model, Probe), AnalyzerError> {
    let run = store.run();
    if run.loss_reduction != task.loss_reduction() {
        return Err(AnalyzerError::Mismatch(format!(
            "the store was written with loss reduction {:?} (manifest field \
             run.loss_reduction), the task's is {:?}: its document gradients would not be \
             scaled as the stored sketches and factors are",
            run.loss_reduction,
            task.loss_reduction()
        )));
    }
    let names: Vec<String> = run.layers.iter().map(|l| l.name.clone()).collect();
    let probe = Probe::new(&names);
    let path = store.checkpoint_path(window)?;
    let model = task
        .load_model(&path, &probe.tap(), &device.clone().autodiff())
        .map_err(AnalyzerError::task(format!(
            "loading the checkpoint {}",
            path.display()
        )))?;
    check_layers(run, &probe.layers())?;
    Ok((model, probe))
}

fn check_layers(run: &RunInfo, model: &[LayerSpec]) -> Result<(), AnalyzerError> {
    for l in &run.layers {
        match model.iter().find(|m| m.name == l.name) {
            None => {
                return Err(AnalyzerError::Mismatch(format!(
                    "the store's layer {} is not a TrackedLinear of the model (model tracks: {})",
                    l.name,
                    model
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Some(m) if (m.d_in, m.d_out, m.bias) != (l.d_in, l.d_out, l.bias) => {
                return Err(AnalyzerError::Mismatch(format!(
                    "layer {}: the store has d_in={} d_out={} bias={}, the model d_in={} d_out={} bias={}",
                    l.name, l.d_in, l.d_out, l.bias, m.d_in, m.d_out, m.bias
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Gradients of the query losses with respect to every tracked layer, `batch_size` queries per
/// forward/backward pass.
pub fn query_gradients<T: Task>(
    task: &T,
    model: &T::Model,
    probe: &Probe,
    queries: &[Query],
    batch_size: usize,
    device: &Device,
) -> Result<QueryGradients, AnalyzerError> {
    let specs = probe.layers();
    let mut grads: Vec<Vec<f64>> = specs
        .iter()
        .map(|l| Vec::with_capacity(queries.len() * l.d_out * l.d_in_aug()))
        .collect();
    let mut nats = Vec::with_capacity(queries.len());
    let device = device.clone().autodiff();
    for chunk in queries.chunks(batch_size.max(1)) {
        let (batch, step) = task
            .query_batch(chunk, &device)
            .map_err(AnalyzerError::task("building the query batch"))?;
        if step.docs.len() != chunk.len() {
            return Err(AnalyzerError::task("building the query batch")(
                TaskError::from(format!(
                    "{} queries but the batch describes {} documents",
                    chunk.len(),
                    step.docs.len()
                )),
            ));
        }
        probe.arm();
        let nll = task.completion_nll(model, &batch);
        let values: Vec<f32> = nll
            .clone()
            .detach()
            .try_into_vec_as::<f32>()
            .map_err(|e| AnalyzerError::Device(format!("reading query losses: {e:?}")))?;
        let mut g = nll.sum().backward();
        let dg = probe.document_gradients(&mut g, &step, 1.0)?;
        // Rows come in order of first appearance; map them back to the chunk's order.
        let mut row_of = vec![usize::MAX; chunk.len()];
        for (r, &d) in dg.docs.iter().enumerate() {
            row_of[d] = r;
        }
        for (qi, &r) in row_of.iter().enumerate() {
            if r == usize::MAX {
                return Err(AnalyzerError::argument(
                    "queries",
                    format!("query {:?} has no tokens in its batch", chunk[qi].id),
                ));
            }
            let n: f64 = step
                .doc_index
                .iter()
                .zip(&values)
                .filter(|(d, _)| **d == qi as i32)
                .map(|(_, v)| f64::from(*v))
                .sum();
            nats.push(n);
            for (l, spec) in specs.iter().enumerate() {
                let len = spec.d_out * spec.d_in_aug();
                grads[l].extend(
                    dg.grads[l][r * len..(r + 1) * len]
                        .iter()
                        .map(|&v| f64::from(v)),
                );
            }
        }
    }
    Ok(QueryGradients {
        layers: specs,
        grads,
        nats,
    })
}

/// Query gradients of one window, preconditioned and projected: what the scorer needs.
#[derive(Clone, Debug)]
pub struct PreparedQueries {
    /// The window whose checkpoint and factors were used.
    pub window: u32,
    /// Per store layer: `queries × k_g × k_a` (f32): `P_gᵀ Q̃ P_a`, or the preconditioned
    /// eigenbasis coordinates for a window with a sketch basis.
    pub sketches: Vec<Vec<f32>>,
    /// Per store layer: `queries × d_out × d_in_aug` preconditioned gradients `Q̃` (f32), for
    /// token-wise influence.
    pub preconditioned: Vec<Vec<f32>>,
    /// Per query: `−log p(completion | prompt)` at this checkpoint.
    pub nats: Vec<f64>,
    /// Per store layer: the damping `λ` used.
    pub damping: Vec<f64>,
    /// Per store layer: the diagonal metric of a stored row (`sketch_len` values), used to
    /// normalise rows ([`ScoreConfig::normalize`]): `1 / (Λ_c + λ)` for eigenbasis coordinates
    /// (1 under identity), 1 for random-projection sketches.
    pub row_metric: Vec<Vec<f32>>,
}

impl PreparedQueries {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.nats.len()
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.nats.is_empty()
    }
}

/// Preconditions `grads` with the window's factors, optionally truncates each to rank `r`,
/// and projects it with the store's seeded projections — or, for a layer whose window sketches
/// are eigenbasis coordinates ([`influence_core::SketchBasis`]), takes the query's coordinates
/// in that basis divided by `Λ_c + λ` ([`SubspacePreconditioner`]).
pub fn prepare(
    run: &RunInfo,
    factors: &WindowRecord,
    grads: &QueryGradients,
    config: &ScoreConfig,
) -> Result<PreparedQueries, AnalyzerError> {
    prepare_with(run, factors, grads, config, None)
}

/// [`prepare`], with the window's sketch-space Fisher per layer ([`crate::scorer::sketch_fisher`])
/// for [`ScoreConfig::sketch_curvature`]: random-projection layers then project the raw query
/// gradient and multiply it by `(F_s + λI)⁻¹`, `λ` = the damping relative to `F_s`'s mean
/// eigenvalue (or absolute).
pub fn prepare_with(
    run: &RunInfo,
    factors: &WindowRecord,
    grads: &QueryGradients,
    config: &ScoreConfig,
    sketch_fisher: Option<&[Vec<f64>]>,
) -> Result<PreparedQueries, AnalyzerError> {
    let nq = grads.nats.len();
    let mut sketches = Vec::with_capacity(run.layers.len());
    let mut preconditioned = Vec::with_capacity(run.layers.len());
    let mut damping = Vec::with_capacity(run.layers.len());
    let mut row_metric = Vec::with_capacity(run.layers.len());
    for (li, spec) in run.layers.iter().enumerate() {
        let gi = grads
            .layers
            .iter()
            .position(|l| l.name == spec.name)
            .ok_or_else(|| {
                AnalyzerError::Mismatch(format!("no query gradient for layer {}", spec.name))
            })?;
        let (d_out, d_in) = (spec.d_out, spec.d_in_aug());
        let window_layer = || format!("window {} layer {}", factors.window, spec.name);
        let (pre, sub) = match factors.layers.iter().find(|f| f.name == spec.name) {
            None => {
                // A store written without factors (`factors = false`): random-projection
                // sketches score with the plain gradient (learning-rate weighted if asked).
                if config.strategy != Strategy::Identity
                    || run.sketch_scheme != influence_core::SketchScheme::Random
                {
                    return Err(AnalyzerError::argument(
                        "strategy",
                        format!(
                            "{} has no factors (the store was written with factors = false?): \
                             only strategy identity can score it, and only random-projection \
                             sketches (this run's are {:?}, the strategy is {:?})",
                            window_layer(),
                            run.sketch_scheme,
                            config.strategy
                        ),
                    ));
                }
                (Preconditioner::identity(d_out, d_in), None)
            }
            Some(lf) => {
                // Token-wise influence splits the full-space EK-FAC score whatever the
                // sketches are.
                let full_strategy = match (&lf.sketch_basis, config.strategy) {
                    (Some(_), Strategy::Diagonal) => {
                        return Err(AnalyzerError::argument(
                            "strategy",
                            format!(
                                "diagonal works in the parameter basis, but the sketches of {} \
                                 are eigenbasis coordinates (use ekfac, kfac or identity)",
                                window_layer()
                            ),
                        ));
                    }
                    (_, s) => s,
                };
                let named = |source| AnalyzerError::Preconditioner {
                    what: window_layer(),
                    source,
                };
                let pre = Preconditioner::new(lf, full_strategy, config.damping).map_err(named)?;
                let sub = match &lf.sketch_basis {
                    Some(b) => {
                        if config.rank.is_some() {
                            return Err(AnalyzerError::argument(
                                "rank",
                                format!(
                                    "applies to random-projection sketches; {} stores eigenbasis \
                                 coordinates",
                                    window_layer()
                                ),
                            ));
                        }
                        check_basis(b, &window_layer(), d_out, d_in, spec.sketch_len())?;
                        Some(
                            SubspacePreconditioner::new(lf, config.strategy, config.damping)
                                .map_err(named)?,
                        )
                    }
                    None => None,
                };
                (pre, sub)
            }
        };
        damping.push(sub.as_ref().map_or(pre.damping(), |s| s.damping()));
        row_metric.push(sub.as_ref().map_or_else(
            || vec![1.0; spec.sketch_len()],
            |s| s.metric().into_iter().map(|v| v as f32).collect(),
        ));
        let (pa, pg) = run.projections(li).ok_or_else(|| {
            AnalyzerError::Mismatch(format!("layer {}: cannot rebuild projections", spec.name))
        })?;
        // Sketch-space curvature (random-projection layers only): `(F_s + λI)⁻¹`, kk × kk.
        let sketch_inverse = match (sketch_fisher, &sub) {
            (Some(fs), None) if run.projection != ProjectionKind::Identity => {
                let kk = spec.sketch_len();
                let f = fs.get(li).filter(|f| f.len() == kk * kk).ok_or_else(|| {
                    AnalyzerError::Mismatch(format!(
                        "{}: the sketch Fisher does not have {kk}×{kk} values",
                        window_layer()
                    ))
                })?;
                Some(damped_inverse(f, kk, config.damping, &window_layer())?)
            }
            _ => None,
        };
        let mut sk = Vec::with_capacity(nq * spec.sketch_len());
        let mut pc = Vec::with_capacity(nq * d_out * d_in);
        for q in 0..nq {
            let g = &grads.grads[gi][q * d_out * d_in..(q + 1) * d_out * d_in];
            if let Some(i) = g.iter().position(|v| !v.is_finite()) {
                return Err(AnalyzerError::NonFinite(format!(
                    "{}: the gradient of query #{q} (−log p = {}) has {} at item {i}: the \
                     window's checkpoint gives a non-finite loss or gradient",
                    window_layer(),
                    grads.nats[q],
                    g[i]
                )));
            }
            let mut x = pre.apply(g)?;
            if let Some(r) = config.rank {
                x = low_rank(&x, d_out, d_in, r)?;
            }
            pc.extend(x.iter().map(|&v| v as f32));
            if let Some(sub) = &sub {
                sk.extend(sub.apply(g, d_out, d_in)?.iter().map(|&v| v as f32));
            } else if let Some((inv, kk)) = &sketch_inverse {
                let raw = project(g, d_out, d_in, &pg.values, spec.k_g, &pa.values, spec.k_a);
                sk.extend((0..*kk).map(|i| {
                    inv[i * kk..(i + 1) * kk]
                        .iter()
                        .zip(&raw)
                        .map(|(a, &b)| a * f64::from(b))
                        .sum::<f64>() as f32
                }));
            } else if run.projection == ProjectionKind::Identity {
                sk.extend(x.iter().map(|&v| v as f32));
            } else {
                sk.extend(project(
                    &x, d_out, d_in, &pg.values, spec.k_g, &pa.values, spec.k_a,
                ));
            }
        }
        for (what, v) in [("sketch", &sk), ("preconditioned gradient", &pc)] {
            if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                let per = v.len() / nq.max(1);
                return Err(AnalyzerError::NonFinite(format!(
                    "{}: the {what} of query #{} is {} at item {}: the window's factors or \
                     damping make the preconditioner overflow",
                    window_layer(),
                    i / per.max(1),
                    v[i],
                    i % per.max(1)
                )));
            }
        }
        sketches.push(sk);
        preconditioned.push(pc);
    }
    Ok(PreparedQueries {
        window: factors.window,
        sketches,
        preconditioned,
        nats: grads.nats.clone(),
        damping,
        row_metric,
    })
}

/// `(F + λI)⁻¹` (row-major `n × n`) of a symmetric PSD `F`, `λ` from `damping` relative to the
/// mean eigenvalue; with `n`.
fn damped_inverse(
    f: &[f64],
    n: usize,
    damping: Damping,
    what: &str,
) -> Result<(Vec<f64>, usize), AnalyzerError> {
    let e = influence_ekfac::eigh_named(f, n, &format!("{what}: sketch Fisher"))?;
    let values: Vec<f64> = e.values.iter().map(|v| v.max(0.0)).collect();
    let lambda = match damping {
        Damping::Absolute(l) => l,
        Damping::RelativeToMean(r) => r * values.iter().sum::<f64>() / n.max(1) as f64,
    };
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(AnalyzerError::argument(
            "damping",
            format!("{what}: the sketch Fisher's damping must be positive, got {lambda}"),
        ));
    }
    let mut inv = vec![0.0; n * n];
    for (k, v) in values.iter().enumerate() {
        let w = 1.0 / (v + lambda);
        for i in 0..n {
            let vik = e.vectors[i * n + k] * w;
            for j in 0..n {
                inv[i * n + j] += vik * e.vectors[j * n + k];
            }
        }
    }
    Ok((inv, n))
}

/// `P_gᵀ X P_a` (`k_g × k_a`) of `X` (`d_out × d_in`), projections row-major `d × k`.
pub fn project(
    x: &[f64],
    d_out: usize,
    d_in: usize,
    pg: &[f32],
    k_g: usize,
    pa: &[f32],
    k_a: usize,
) -> Vec<f32> {
    // T = X P_a  (d_out × k_a)
    let mut t = vec![0.0f64; d_out * k_a];
    for i in 0..d_out {
        let row = &x[i * d_in..(i + 1) * d_in];
        let ti = &mut t[i * k_a..(i + 1) * k_a];
        for (j, &xv) in row.iter().enumerate() {
            if xv == 0.0 {
                continue;
            }
            for (tv, &p) in ti.iter_mut().zip(&pa[j * k_a..(j + 1) * k_a]) {
                *tv += xv * f64::from(p);
            }
        }
    }
    // P_gᵀ T  (k_g × k_a)
    let mut out = vec![0.0f64; k_g * k_a];
    for i in 0..d_out {
        let ti = &t[i * k_a..(i + 1) * k_a];
        for (a, &p) in pg[i * k_g..(i + 1) * k_g].iter().enumerate() {
            let p = f64::from(p);
            for (o, &tv) in out[a * k_a..(a + 1) * k_a].iter_mut().zip(ti) {
                *o += p * tv;
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `P_gᵀ X P_a` against a triple loop.
    #[test]
    fn projection_matches_the_definition() {
        let (d_out, d_in, k_g, k_a) = (3, 4, 2, 3);
        let x: Vec<f64> = (0..d_out * d_in).map(|i| (i as f64 * 0.37).sin()).collect();
        let pg: Vec<f32> = (0..d_out * k_g).map(|i| (i as f32 * 0.71).cos()).collect();
        let pa: Vec<f32> = (0..d_in * k_a).map(|i| (i as f32 * 0.13).sin()).collect();
        let got = project(&x, d_out, d_in, &pg, k_g, &pa, k_a);
        for a in 0..k_g {
            for b in 0..k_a {
                let mut want = 0.0f64;
                for i in 0..d_out {
                    for j in 0..d_in {
                        want += f64::from(pg[i * k_g + a])
                            * x[i * d_in + j]
                            * f64::from(pa[j * k_a + b]);
                    }
                }
                assert!((f64::from(got[a * k_a + b]) - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn query_file_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("q.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"prompt\":\"x\",\"completion\":\"y\",\"group\":\"g\"}\n\n{\"id\":\"a\",\"prompt\":\"x\",\"completion\":\"z\"}\n").expect("write");
        let err = read_queries(&p).expect_err("duplicate");
        assert!(
            err.to_string().contains("q.jsonl:3: duplicate query id"),
            "{err}"
        );
        std::fs::write(&p, "{\"id\":\"a\",\"prompt\":\"x\"}\n").expect("write");
        let err = read_queries(&p).expect_err("missing");
        assert!(
            err.to_string().contains(":1:") && err.to_string().contains("completion"),
            "{err}"
        );
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"prompt\":\"x\",\"completion\":\"y\",\"group\":\"g\"}\n",
        )
        .expect("write");
        let q = read_queries(&p).expect("ok");
        assert_eq!(q[0].extra["group"], "g");
    }
}
