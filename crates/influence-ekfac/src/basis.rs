//! Eigenbasis-aligned sketches: which coordinates of the Kronecker eigenbasis a window keeps
//! ([`eigen_sketch_basis`]) and EK-FAC restricted to them ([`SubspacePreconditioner`]).
//!
//! In the eigenbasis `(Q_S, Q_A)` of a layer's factors, EK-FAC is diagonal:
//! `score = Σ_ij (Q_Sᵀ Q Q_A)_ij (Q_Sᵀ G_n Q_A)_ij / (Λ_ij + λ)`. A sketch that stores the rotated
//! gradient's entries on a set `C` of coordinates therefore scores *exactly* the part of the
//! EK-FAC score that lies in `C` — no projection noise, only truncation — and the corrected
//! eigenvalues on `C` are the mean squares of the stored entries themselves.

use influence_core::{CoordinateSelection, LayerFactors, SketchBasis};

use crate::{Damping, EkfacError, Strategy, damping_of, kfac_eigenvalues, tokens_per_example};

/// The damping factor the selection uses for `λ` (kronfluence's `0.1 × mean Λ`).
const SELECTION_DAMPING: f64 = 0.1;

/// The corrected eigenvalues of `f` (`d_out × d_in_aug`), or KFAC's where none were fitted.
fn eigenvalues(f: &LayerFactors) -> Result<Vec<f64>, EkfacError> {
    let (ds, da) = (f.eig_s.dim, f.eig_a.dim);
    match &f.corrected {
        Some(c) if c.len() == ds * da => Ok(c.clone()),
        Some(c) => Err(EkfacError::Shape {
            what: format!("{}: corrected eigenvalues", f.name),
            expected: ds * da,
            got: c.len(),
        }),
        None => Ok(kfac_eigenvalues(&f.eig_s, &f.eig_a, tokens_per_example(f))),
    }
}

/// Column `col` of the row-major `dim × dim` eigenvector matrix, its sign made canonical (the
/// entry of largest magnitude, first on ties, is positive), rounded to f32 as the hook uses it.
fn canonical_column(vectors: &[f64], dim: usize, col: usize) -> Vec<f32> {
    let v: Vec<f64> = (0..dim).map(|r| vectors[r * dim + col]).collect();
    let mut best = 0usize;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > v[best].abs() {
            best = i;
        }
    }
    let sign = if v[best] < 0.0 { -1.0 } else { 1.0 };
    v.iter().map(|&x| (sign * x) as f32).collect()
}

/// Row-major `dim × cols.len()` matrix whose columns are the canonical eigenvectors `cols`.
fn columns(vectors: &[f64], dim: usize, cols: &[usize]) -> Vec<f64> {
    let picked: Vec<Vec<f32>> = cols
        .iter()
        .map(|&c| canonical_column(vectors, dim, c))
        .collect();
    let mut out = Vec::with_capacity(dim * cols.len());
    for r in 0..dim {
        out.extend(picked.iter().map(|p| f64::from(p[r])));
    }
    out
}

/// Chooses the `count` coordinates of `factors`' eigenbasis that a window's sketches keep, at
/// most `max_side` eigenvectors per side, ranked by `select` (ties: lower index first, so the
/// choice is deterministic). `from_window` is recorded in the basis.
pub fn eigen_sketch_basis(
    factors: &LayerFactors,
    from_window: u32,
    count: usize,
    select: CoordinateSelection,
    max_side: usize,
) -> Result<SketchBasis, EkfacError> {
    let (ds, da) = (factors.eig_s.dim, factors.eig_a.dim);
    let (cap_g, cap_a) = (max_side.min(ds), max_side.min(da));
    if count == 0 || count > cap_g * cap_a {
        return Err(EkfacError::Missing(format!(
            "{}: cannot keep {count} coordinates from at most {cap_g} × {cap_a} eigenvectors \
             (d_out {ds}, d_in {da}, max_side {max_side})",
            factors.name
        )));
    }
    let lambda = eigenvalues(factors)?;
    if lambda.iter().any(|v| !v.is_finite()) {
        return Err(EkfacError::NonFinite(format!(
            "{}: eigenvalues of window {from_window}",
            factors.name
        )));
    }
    let damp = SELECTION_DAMPING * lambda.iter().sum::<f64>() / lambda.len().max(1) as f64;
    let key = |l: f64| -> f64 {
        let l = l.max(0.0);
        match select {
            CoordinateSelection::Eigenvalue => l,
            CoordinateSelection::Contribution if damp > 0.0 => l / (l + damp).powi(2),
            CoordinateSelection::Contribution => l,
        }
    };
    let mut order: Vec<usize> = (0..ds * da).collect();
    order.sort_by(|&x, &y| key(lambda[y]).total_cmp(&key(lambda[x])).then(x.cmp(&y)));
    // Greedy: take coordinates in order while their eigenvectors fit the per-side caps.
    let (mut rows, mut cols): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    let mut pairs = Vec::with_capacity(count);
    for idx in order {
        let (i, j) = (idx / da, idx % da);
        let (has_i, has_j) = (rows.contains(&i), cols.contains(&j));
        if (!has_i && rows.len() == cap_g) || (!has_j && cols.len() == cap_a) {
            continue;
        }
        if !has_i {
            rows.push(i);
        }
        if !has_j {
            cols.push(j);
        }
        pairs.push((i, j));
        if pairs.len() == count {
            break;
        }
    }
    let pos = |v: &[usize], x: usize| v.iter().position(|&y| y == x).unwrap_or_default();
    let coords = pairs
        .iter()
        .map(|&(i, j)| (pos(&rows, i) * cols.len() + pos(&cols, j)) as u32)
        .collect();
    Ok(SketchBasis {
        from_window,
        k_a: cols.len(),
        k_g: rows.len(),
        p_a: columns(&factors.eig_a.vectors, da, &cols),
        p_g: columns(&factors.eig_s.vectors, ds, &rows),
        coords,
        second_moment: None,
        rows: 0,
    })
}

/// Checks a basis against its layer's dimensions and stored sketch length; names the layer.
pub fn check_basis(
    basis: &SketchBasis,
    layer: &str,
    d_out: usize,
    d_in_aug: usize,
    sketch_len: usize,
) -> Result<(), EkfacError> {
    let shape = |what: &str, expected: usize, got: usize| {
        Err(EkfacError::Shape {
            what: format!("{layer}: sketch basis {what}"),
            expected,
            got,
        })
    };
    if basis.p_a.len() != d_in_aug * basis.k_a {
        return shape("P_a", d_in_aug * basis.k_a, basis.p_a.len());
    }
    if basis.p_g.len() != d_out * basis.k_g {
        return shape("P_g", d_out * basis.k_g, basis.p_g.len());
    }
    if basis.coords.len() != sketch_len {
        return shape("coordinates", sketch_len, basis.coords.len());
    }
    if let Some(m) = &basis.second_moment
        && m.len() != sketch_len
    {
        return shape("second moment", sketch_len, m.len());
    }
    let block = basis.k_a * basis.k_g;
    if let Some(c) = basis.coords.iter().find(|&&c| c as usize >= block) {
        return Err(EkfacError::Missing(format!(
            "{layer}: sketch basis coordinate {c} outside its {} × {} block",
            basis.k_g, basis.k_a
        )));
    }
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    if !finite(&basis.p_a)
        || !finite(&basis.p_g)
        || !basis.second_moment.as_deref().is_none_or(finite)
    {
        return Err(EkfacError::NonFinite(format!("{layer}: sketch basis")));
    }
    Ok(())
}

/// `(P_gᵀ X P_a)[coords]` of `X` (`d_out × d_in` row-major) for a basis.
pub fn basis_coordinates(basis: &SketchBasis, x: &[f64], d_out: usize, d_in: usize) -> Vec<f64> {
    let (kg, ka) = (basis.k_g, basis.k_a);
    // T = X P_a  (d_out × k_a)
    let mut t = vec![0.0f64; d_out * ka];
    for i in 0..d_out {
        let ti = &mut t[i * ka..(i + 1) * ka];
        for (j, &xv) in x[i * d_in..(i + 1) * d_in].iter().enumerate() {
            if xv != 0.0 {
                for (tv, &p) in ti.iter_mut().zip(&basis.p_a[j * ka..(j + 1) * ka]) {
                    *tv += xv * p;
                }
            }
        }
    }
    basis
        .coords
        .iter()
        .map(|&c| {
            let (a, b) = (c as usize / ka, c as usize % ka);
            (0..d_out)
                .map(|i| basis.p_g[i * kg + a] * t[i * ka + b])
                .sum()
        })
        .collect()
}

/// `(F + λI)⁻¹` restricted to a window's kept eigenbasis coordinates: the query's coordinates
/// divided by `Λ_c + λ`.
///
/// * `Ekfac`: `Λ_c` = the basis's second moment (the stored entries' mean square over the
///   window's rows); `λ` = the damping EK-FAC uses for the window's full factors, so a post-hoc
///   basis scores exactly as full EK-FAC does on the kept coordinates.
/// * `Kfac`: `Λ_c = c · (p_gᵀ S p_g)(p_aᵀ A p_a)` with the window's own `A`, `S` (KFAC's
///   eigenvalues when the basis is the window's own).
/// * `Identity`: no preconditioning (the gradient dot product inside the kept coordinates).
///
/// `Diagonal` lives in the parameter basis and has no meaning here: an error.
#[derive(Clone, Debug)]
pub struct SubspacePreconditioner {
    basis: SketchBasis,
    denom: Vec<f64>,
    damping: f64,
}

impl SubspacePreconditioner {
    /// Builds the preconditioner of one layer of a window whose factors carry a sketch basis.
    pub fn new(
        factors: &LayerFactors,
        strategy: Strategy,
        damping: Damping,
    ) -> Result<Self, EkfacError> {
        let name = &factors.name;
        let basis = factors.sketch_basis.clone().ok_or_else(|| {
            EkfacError::Missing(format!("{name}: the window has no sketch basis"))
        })?;
        let (ds, da) = (factors.eig_s.dim, factors.eig_a.dim);
        check_basis(&basis, name, ds, da, basis.coords.len())?;
        let (kg, ka) = (basis.k_g, basis.k_a);
        let (lambda, damping): (Vec<f64>, f64) = match strategy {
            Strategy::Identity => (vec![0.0; basis.coords.len()], 1.0),
            Strategy::Ekfac => {
                let lam = basis.second_moment.clone().ok_or_else(|| {
                    EkfacError::Missing(format!(
                        "{name}: the sketch basis has no second moment (window not closed)"
                    ))
                })?;
                (lam, damping_of(factors, Strategy::Ekfac, damping)?)
            }
            Strategy::Kfac => {
                let quad = |m: &[f64], p: &[f64], d: usize, k: usize, col: usize| -> f64 {
                    let v: Vec<f64> = (0..d).map(|r| p[r * k + col]).collect();
                    (0..d)
                        .map(|r| v[r] * (0..d).map(|c| m[r * d + c] * v[c]).sum::<f64>())
                        .sum()
                };
                let ls: Vec<f64> = (0..kg)
                    .map(|i| quad(&factors.s, &basis.p_g, ds, kg, i).max(0.0))
                    .collect();
                let la: Vec<f64> = (0..ka)
                    .map(|j| quad(&factors.a, &basis.p_a, da, ka, j).max(0.0))
                    .collect();
                let c = tokens_per_example(factors);
                let lam = basis
                    .coords
                    .iter()
                    .map(|&x| c * ls[x as usize / ka] * la[x as usize % ka])
                    .collect();
                (lam, damping_of(factors, Strategy::Kfac, damping)?)
            }
            Strategy::Diagonal => {
                return Err(EkfacError::Missing(format!(
                    "{name}: strategy diagonal works in the parameter basis; this window's \
                     sketches are eigenbasis coordinates (use ekfac, kfac or identity)"
                )));
            }
        };
        if lambda.iter().any(|v| !v.is_finite()) {
            return Err(EkfacError::NonFinite(format!(
                "{name}: eigenvalues of the kept coordinates"
            )));
        }
        let denom = lambda.iter().map(|l| l.max(0.0) + damping).collect();
        Ok(Self {
            basis,
            denom,
            damping,
        })
    }

    /// The damping `λ` in use.
    pub fn damping(&self) -> f64 {
        self.damping
    }

    /// The metric of the kept coordinates, `1 / (Λ_c + λ)` (1 under identity): a stored row's
    /// squared norm in the scoring metric is `Σ_c metric_c K_c²`.
    pub fn metric(&self) -> Vec<f64> {
        self.denom.iter().map(|d| 1.0 / d).collect()
    }

    /// The basis.
    pub fn basis(&self) -> &SketchBasis {
        &self.basis
    }

    /// The preconditioned kept coordinates of a gradient `G` (`d_out × d_in` row-major).
    pub fn apply(&self, grad: &[f64], d_out: usize, d_in: usize) -> Result<Vec<f64>, EkfacError> {
        if grad.len() != d_out * d_in
            || self.basis.p_a.len() != d_in * self.basis.k_a
            || self.basis.p_g.len() != d_out * self.basis.k_g
        {
            return Err(EkfacError::Shape {
                what: "gradient (sketch basis)".into(),
                expected: self.basis.p_a.len() / self.basis.k_a.max(1)
                    * (self.basis.p_g.len() / self.basis.k_g.max(1)),
                got: grad.len(),
            });
        }
        Ok(basis_coordinates(&self.basis, grad, d_out, d_in)
            .into_iter()
            .zip(&self.denom)
            .map(|(x, d)| x / d)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Preconditioner, eigh, rotate};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn spd(n: usize, rng: &mut StdRng) -> Vec<f64> {
        let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        m
    }

    /// Factors with random eigenbases and corrected eigenvalues from `docs` random gradients.
    fn fitted(ds: usize, da: usize, docs: &[Vec<f64>], rng: &mut StdRng) -> LayerFactors {
        let (a, s) = (spd(da, rng), spd(ds, rng));
        let (eig_a, eig_s) = (eigh(&a, da).expect("a"), eigh(&s, ds).expect("s"));
        let mut lam = vec![0.0; ds * da];
        for g in docs {
            for (l, r) in lam.iter_mut().zip(rotate(&eig_s, &eig_a, g)) {
                *l += r * r / docs.len() as f64;
            }
        }
        LayerFactors {
            name: "layer".into(),
            a,
            s,
            tokens: 100,
            tokens_per_example: 4.0,
            eig_a,
            eig_s,
            corrected: Some(lam),
            corrected_examples: docs.len() as u64,
            sketch_basis: None,
        }
    }

    fn grads(n: usize, len: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| (0..len).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect()
    }

    #[test]
    fn selection_keeps_the_largest_eigenvalues_within_the_caps() {
        let mut rng = StdRng::seed_from_u64(5);
        let (ds, da) = (5, 4);
        let docs = grads(30, ds * da, &mut rng);
        let f = fitted(ds, da, &docs, &mut rng);
        let lam = f.corrected.clone().expect("fitted");
        let b = eigen_sketch_basis(&f, 3, 6, CoordinateSelection::Eigenvalue, 64).expect("basis");
        assert_eq!((b.coords.len(), b.from_window), (6, 3));
        // Without binding caps the kept set is exactly the top 6 by Λ.
        let mut order: Vec<usize> = (0..ds * da).collect();
        order.sort_by(|&x, &y| lam[y].total_cmp(&lam[x]));
        let mut want: Vec<f64> = order[..6].iter().map(|&i| lam[i]).collect();
        // Recover each kept coordinate's Λ from the rotated documents in the stored basis.
        let mut got = vec![0.0; 6];
        for g in &docs {
            for (m, x) in got.iter_mut().zip(basis_coordinates(&b, g, ds, da)) {
                *m += x * x / docs.len() as f64;
            }
        }
        want.sort_by(f64::total_cmp);
        let mut sorted = got.clone();
        sorted.sort_by(f64::total_cmp);
        for (g, w) in sorted.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * w.abs().max(1e-3), "{g} vs {w}");
        }
        // Most important first.
        assert!(got[0] >= got[5]);
        // Binding caps: two eigenvectors a side, so at most 2 × 2 coordinates exist.
        let capped = eigen_sketch_basis(&f, 0, 4, CoordinateSelection::Contribution, 2)
            .expect("capped basis");
        assert_eq!((capped.k_g, capped.k_a), (2, 2));
        let err = eigen_sketch_basis(&f, 0, 5, CoordinateSelection::Eigenvalue, 2)
            .expect_err("5 > 2 × 2");
        assert!(err.to_string().contains("layer"), "{err}");
    }

    /// The coordinates are `(P_gᵀ X P_a)[c]` with canonical-sign eigenvectors: checked against
    /// the dense rotation `Q_Sᵀ X Q_A` up to each column's sign.
    #[test]
    fn coordinates_are_the_rotated_gradient() {
        let mut rng = StdRng::seed_from_u64(6);
        let (ds, da) = (4, 6);
        let docs = grads(10, ds * da, &mut rng);
        let f = fitted(ds, da, &docs, &mut rng);
        let b = eigen_sketch_basis(&f, 0, 9, CoordinateSelection::Eigenvalue, 3).expect("basis");
        let x = &docs[0];
        let dense = rotate(&f.eig_s, &f.eig_a, x);
        let got = basis_coordinates(&b, x, ds, da);
        for (c, &coord) in b.coords.iter().enumerate() {
            let (r, k) = (coord as usize / b.k_a, coord as usize % b.k_a);
            // Which eigenvector is column r of P_g / column k of P_a, and with which sign.
            let find = |p: &[f64], kk: usize, col: usize, q: &[f64], d: usize| -> (usize, f64) {
                (0..d)
                    .map(|e| {
                        let dot: f64 = (0..d).map(|i| p[i * kk + col] * q[i * d + e]).sum();
                        (e, dot)
                    })
                    .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                    .expect("non-empty")
            };
            let (i, si) = find(&b.p_g, b.k_g, r, &f.eig_s.vectors, ds);
            let (j, sj) = find(&b.p_a, b.k_a, k, &f.eig_a.vectors, da);
            let want = si.signum() * sj.signum() * dense[i * da + j];
            assert!((got[c] - want).abs() < 1e-5, "{} vs {want}", got[c]);
        }
    }

    /// With every coordinate kept and the second moment from the same documents, the subspace
    /// preconditioner's score equals full EK-FAC's.
    #[test]
    fn full_subspace_equals_full_ekfac() {
        let mut rng = StdRng::seed_from_u64(7);
        let (ds, da) = (3, 5);
        let docs = grads(20, ds * da, &mut rng);
        let mut f = fitted(ds, da, &docs, &mut rng);
        let mut b =
            eigen_sketch_basis(&f, 0, ds * da, CoordinateSelection::Eigenvalue, 99).expect("basis");
        let mut m = vec![0.0; ds * da];
        for g in &docs {
            for (v, x) in m.iter_mut().zip(basis_coordinates(&b, g, ds, da)) {
                *v += x * x / docs.len() as f64;
            }
        }
        b.second_moment = Some(m);
        b.rows = docs.len() as u64;
        f.sketch_basis = Some(b.clone());
        let q: Vec<f64> = (0..ds * da).map(|_| rng.random_range(-1.0..1.0)).collect();
        for strategy in [Strategy::Ekfac, Strategy::Kfac, Strategy::Identity] {
            let full = Preconditioner::new(&f, strategy, Damping::default()).expect("full");
            let sub = SubspacePreconditioner::new(&f, strategy, Damping::default()).expect("sub");
            assert!((full.damping() - sub.damping()).abs() < 1e-12);
            let qf = full.apply(&q).expect("apply");
            let qs = sub.apply(&q, ds, da).expect("apply");
            for g in &docs {
                let want: f64 = qf.iter().zip(g).map(|(a, b)| a * b).sum();
                let got: f64 = qs
                    .iter()
                    .zip(basis_coordinates(&b, g, ds, da))
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{strategy:?}: {got} vs {want}"
                );
            }
        }
        let err = SubspacePreconditioner::new(&f, Strategy::Diagonal, Damping::default())
            .expect_err("diagonal");
        assert!(err.to_string().contains("diagonal"), "{err}");
    }
}
