//! EK-FAC and KFAC factor math in f64, on the host.
//!
//! The hook accumulates `A = Σ a aᵀ / N` and `S = Σ g gᵀ / N` per layer on the training device;
//! this crate turns them into eigenbases ([`eigh`]), supplies the KFAC eigenvalues
//! ([`kfac_eigenvalues`]) and preconditions a gradient with the damped inverse
//! ([`Preconditioner`]):
//!
//! `Q̃ = Q_S [(Q_Sᵀ G Q_A) ⊘ (Λ + λ)] Q_Aᵀ`.
//!
//! ```
//! use influence_ekfac::{eigh, kfac_eigenvalues};
//! // A diagonal 2×2 factor: eigenvalues ascending, eigenvectors the unit vectors.
//! let e = eigh(&[3.0, 0.0, 0.0, 1.0], 2).expect("symmetric");
//! assert!((e.values[0] - 1.0).abs() < 1e-12 && (e.values[1] - 3.0).abs() < 1e-12);
//! let lambda = kfac_eigenvalues(&e, &e, 2.0);
//! assert_eq!(lambda.len(), 4);
//! ```

mod basis;

pub use basis::{SubspacePreconditioner, basis_coordinates, check_basis, eigen_sketch_basis};

use faer::{Mat, Side};
use influence_core::{Eigenbasis, LayerFactors};
use serde::{Deserialize, Serialize};

/// Errors of the factor math; each names the layer or argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum EkfacError {
    /// A matrix had the wrong number of values.
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        /// Which matrix.
        what: String,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A value was NaN or infinite.
    #[error("{0} contains a non-finite value")]
    NonFinite(String),
    /// The eigensolver did not converge.
    #[error("eigendecomposition of {0} did not converge")]
    NoConvergence(String),
    /// A strategy needs data the factors do not have.
    #[error("{0}")]
    Missing(String),
}

/// Symmetric eigendecomposition of the `n × n` row-major matrix `m` (symmetrised first:
/// `(M + Mᵀ)/2`). Eigenvalues ascending; eigenvectors in the columns of `vectors`.
pub fn eigh(m: &[f64], n: usize) -> Result<Eigenbasis, EkfacError> {
    eigh_named(m, n, "matrix")
}

/// [`eigh`] with a name for error messages.
pub fn eigh_named(m: &[f64], n: usize, name: &str) -> Result<Eigenbasis, EkfacError> {
    if m.len() != n * n {
        return Err(EkfacError::Shape {
            what: name.to_string(),
            expected: n * n,
            got: m.len(),
        });
    }
    if m.iter().any(|v| !v.is_finite()) {
        return Err(EkfacError::NonFinite(name.to_string()));
    }
    let sym = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (m[i * n + j] + m[j * n + i]));
    let evd = sym
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| EkfacError::NoConvergence(name.to_string()))?;
    let u = evd.U();
    let s = evd.S();
    let mut vectors = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            vectors[i * n + j] = u[(i, j)];
        }
    }
    let values = (0..n).map(|i| s[i]).collect();
    Ok(Eigenbasis {
        dim: n,
        vectors,
        values,
    })
}

/// KFAC eigenvalues `Λ_ij = c · λ_S,i · λ_A,j` (`d_out × d_in` row-major).
///
/// `A` and `S` are per-token averages, so `S ⊗ A` is a per-*token* Fisher; the per-example Fisher
/// `mean_n vec(G_n) vec(G_n)ᵀ` of `G_n = Σ_{t∈n} g_t a_tᵀ` is `c = tokens per example` times larger
/// when tokens are uncorrelated. Pass that ratio as `tokens_per_example` so that KFAC and
/// EK-FAC eigenvalues share one scale.
pub fn kfac_eigenvalues(
    eig_s: &Eigenbasis,
    eig_a: &Eigenbasis,
    tokens_per_example: f64,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(eig_s.dim * eig_a.dim);
    for &ls in &eig_s.values {
        for &la in &eig_a.values {
            // Clamp tiny negative round-off: a covariance has no negative eigenvalues.
            out.push(tokens_per_example * ls.max(0.0) * la.max(0.0));
        }
    }
    out
}

/// Which curvature approximation preconditions query gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Kronecker eigenbasis with corrected eigenvalues (falls back to KFAC where none were fitted).
    #[default]
    Ekfac,
    /// Kronecker eigenbasis with `λ_S λ_Aᵀ` eigenvalues.
    Kfac,
    /// The diagonal of the EK-FAC matrix (of KFAC's where no corrected eigenvalues were fitted)
    /// in the parameter basis: `D_ij = Σ_kl (Q_S)_ik² Λ_kl (Q_A)_jl²`; `Q̃ = G ⊘ (D + λ)`.
    Diagonal,
    /// No preconditioning: the plain gradient dot product.
    Identity,
}

/// Damping `λ` added to the eigenvalues.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Damping {
    /// `λ = factor × mean(Λ)` per layer (kronfluence's heuristic, factor 0.1 by default).
    RelativeToMean(f64),
    /// A fixed `λ`.
    Absolute(f64),
}

impl Default for Damping {
    fn default() -> Self {
        Damping::RelativeToMean(0.1)
    }
}

/// The eigenvalues `strategy` preconditions a layer with (`d_out × d_in`, row-major): the
/// corrected eigenvalues for EK-FAC and diagonal (KFAC's when the window has none), KFAC's
/// products, or zeros for identity.
fn eigenvalues(factors: &LayerFactors, strategy: Strategy) -> Result<Vec<f64>, EkfacError> {
    let (ds, da) = (factors.eig_s.dim, factors.eig_a.dim);
    Ok(match strategy {
        Strategy::Identity => vec![0.0; ds * da],
        Strategy::Kfac => {
            kfac_eigenvalues(&factors.eig_s, &factors.eig_a, tokens_per_example(factors))
        }
        Strategy::Ekfac | Strategy::Diagonal => match &factors.corrected {
            Some(c) => {
                if c.len() != ds * da {
                    return Err(EkfacError::Shape {
                        what: format!("{}: corrected eigenvalues", factors.name),
                        expected: ds * da,
                        got: c.len(),
                    });
                }
                c.clone()
            }
            None => kfac_eigenvalues(&factors.eig_s, &factors.eig_a, tokens_per_example(factors)),
        },
    })
}

fn damping_from(
    lambda: &[f64],
    factors: &LayerFactors,
    strategy: Strategy,
    damping: Damping,
) -> Result<f64, EkfacError> {
    let damping = match (strategy, damping) {
        (Strategy::Identity, _) => 1.0,
        (_, Damping::Absolute(l)) => l,
        (_, Damping::RelativeToMean(f)) => {
            f * lambda.iter().sum::<f64>() / lambda.len().max(1) as f64
        }
    };
    if !damping.is_finite() || damping <= 0.0 {
        return Err(EkfacError::Missing(format!(
            "{}: damping must be positive and finite, got {damping}",
            factors.name
        )));
    }
    Ok(damping)
}

/// The damping `λ` that [`Preconditioner::new`] would use for this layer, without building it.
pub fn damping_of(
    factors: &LayerFactors,
    strategy: Strategy,
    damping: Damping,
) -> Result<f64, EkfacError> {
    damping_from(&eigenvalues(factors, strategy)?, factors, strategy, damping)
}

/// A ready-to-use per-layer preconditioner `(F + λI)⁻¹` in the Kronecker eigenbasis.
#[derive(Clone, Debug)]
pub struct Preconditioner {
    strategy: Strategy,
    /// `(d_out, d_in)` of the gradients it applies to.
    shape: (usize, usize),
    q_a: Mat<f64>,
    q_s: Mat<f64>,
    /// `Λ + λ`, `d_out × d_in`.
    denom: Mat<f64>,
    damping: f64,
}

impl Preconditioner {
    /// Builds the preconditioner of one layer from its window factors.
    pub fn new(
        factors: &LayerFactors,
        strategy: Strategy,
        damping: Damping,
    ) -> Result<Self, EkfacError> {
        let da = factors.eig_a.dim;
        let ds = factors.eig_s.dim;
        let lambda = eigenvalues(factors, strategy)?;
        let damping = damping_from(&lambda, factors, strategy, damping)?;
        let q_a = mat_from_rows(&factors.eig_a.vectors, da, da);
        let q_s = mat_from_rows(&factors.eig_s.vectors, ds, ds);
        let lambda = mat_from_rows(&lambda, ds, da);
        let curvature = if strategy == Strategy::Diagonal {
            // diag(Q Λ Qᵀ) with Q = Q_S ⊗ Q_A: (Q_S∘Q_S) Λ (Q_A∘Q_A)ᵀ. Its mean equals mean(Λ).
            let sq = |m: &Mat<f64>| Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].powi(2));
            sq(&q_s) * lambda * sq(&q_a).transpose()
        } else {
            lambda
        };
        Ok(Self {
            strategy,
            shape: (ds, da),
            q_a,
            q_s,
            denom: Mat::from_fn(ds, da, |i, j| curvature[(i, j)] + damping),
            damping,
        })
    }

    /// The identity preconditioner of a `d_out × d_in` gradient ([`Strategy::Identity`]),
    /// which needs no factors: what scores a store written without them (`factors = false`).
    /// Like [`Preconditioner::new`] under identity, its `Λ` is 0 and its damping 1, so that
    /// `Λ + λ = 1`: the plain gradient.
    pub fn identity(d_out: usize, d_in: usize) -> Self {
        Self {
            strategy: Strategy::Identity,
            shape: (d_out, d_in),
            q_a: Mat::zeros(0, 0),
            q_s: Mat::zeros(0, 0),
            denom: Mat::zeros(0, 0),
            damping: 1.0,
        }
    }

    /// The damping `λ` in use.
    pub fn damping(&self) -> f64 {
        self.damping
    }

    /// `(F + λI)⁻¹ G` for a gradient `G` (`d_out × d_in` row-major).
    pub fn apply(&self, grad: &[f64]) -> Result<Vec<f64>, EkfacError> {
        let (ds, da) = self.shape;
        if grad.len() != ds * da {
            return Err(EkfacError::Shape {
                what: "gradient".into(),
                expected: ds * da,
                got: grad.len(),
            });
        }
        let g = mat_from_rows(grad, ds, da);
        let out = match self.strategy {
            Strategy::Identity => g,
            Strategy::Diagonal => Mat::from_fn(ds, da, |i, j| g[(i, j)] / self.denom[(i, j)]),
            Strategy::Ekfac | Strategy::Kfac => {
                let rotated = self.q_s.transpose() * &g * &self.q_a;
                let scaled = Mat::from_fn(ds, da, |i, j| rotated[(i, j)] / self.denom[(i, j)]);
                &self.q_s * scaled * self.q_a.transpose()
            }
        };
        Ok(rows_from_mat(&out))
    }

    /// `⟨G, (F + λI)⁻¹ G⟩`, the squared norm of a gradient in the preconditioned metric, without
    /// forming `(F + λI)⁻¹ G` (one rotation instead of two).
    pub fn quadratic(&self, grad: &[f64]) -> Result<f64, EkfacError> {
        let (ds, da) = self.shape;
        if grad.len() != ds * da {
            return Err(EkfacError::Shape {
                what: "gradient".into(),
                expected: ds * da,
                got: grad.len(),
            });
        }
        let g = mat_from_rows(grad, ds, da);
        let weighted = |m: &Mat<f64>| {
            let mut sum = 0.0;
            for j in 0..da {
                for i in 0..ds {
                    sum += m[(i, j)] * m[(i, j)] / self.denom[(i, j)];
                }
            }
            sum
        };
        Ok(match self.strategy {
            Strategy::Identity => grad.iter().map(|v| v * v).sum(),
            Strategy::Diagonal => weighted(&g),
            Strategy::Ekfac | Strategy::Kfac => weighted(&(self.q_s.transpose() * &g * &self.q_a)),
        })
    }
}

/// Tokens per example of a layer's factors (1 when unknown).
pub fn tokens_per_example(f: &LayerFactors) -> f64 {
    if f.tokens_per_example.is_finite() && f.tokens_per_example > 0.0 {
        f.tokens_per_example
    } else {
        1.0
    }
}

/// The best rank-`rank` approximation (truncated SVD) of the `rows × cols` row-major matrix `m`;
/// `m` itself when `rank ≥ min(rows, cols)`.
pub fn low_rank(m: &[f64], rows: usize, cols: usize, rank: usize) -> Result<Vec<f64>, EkfacError> {
    if m.len() != rows * cols {
        return Err(EkfacError::Shape {
            what: "low-rank input".into(),
            expected: rows * cols,
            got: m.len(),
        });
    }
    if rank >= rows.min(cols) {
        return Ok(m.to_vec());
    }
    let svd = mat_from_rows(m, rows, cols)
        .thin_svd()
        .map_err(|_| EkfacError::NoConvergence("low-rank SVD".into()))?;
    let (u, sv, v) = (svd.U(), svd.S(), svd.V());
    // faer orders singular values non-increasingly.
    let approx = Mat::from_fn(rows, cols, |i, j| {
        (0..rank).map(|k| u[(i, k)] * sv[k] * v[(j, k)]).sum()
    });
    Ok(rows_from_mat(&approx))
}

/// Rotates `G` (`d_out × d_in`) into the Kronecker eigenbasis: `Q_Sᵀ G Q_A`.
pub fn rotate(eig_s: &Eigenbasis, eig_a: &Eigenbasis, grad: &[f64]) -> Vec<f64> {
    let q_s = mat_from_rows(&eig_s.vectors, eig_s.dim, eig_s.dim);
    let q_a = mat_from_rows(&eig_a.vectors, eig_a.dim, eig_a.dim);
    let g = mat_from_rows(grad, eig_s.dim, eig_a.dim);
    rows_from_mat(&(q_s.transpose() * g * q_a))
}

fn mat_from_rows(v: &[f64], rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| v[i * cols + j])
}

fn rows_from_mat(m: &Mat<f64>) -> Vec<f64> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random_spd(n: usize, rng: &mut StdRng) -> Vec<f64> {
        let x: Vec<f64> = (0..n * (n + 3))
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let m = n + 3;
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = (0..m).map(|k| x[i * m + k] * x[j * m + k]).sum();
            }
        }
        out
    }

    #[test]
    fn eigh_reconstructs_and_is_orthonormal() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 7;
        let m = random_spd(n, &mut rng);
        let e = eigh(&m, n).expect("eigh");
        for i in 0..n {
            for j in 0..n {
                let rec: f64 = (0..n)
                    .map(|k| e.vectors[i * n + k] * e.values[k] * e.vectors[j * n + k])
                    .sum();
                assert!((rec - m[i * n + j]).abs() < 1e-10);
                let dot: f64 = (0..n)
                    .map(|k| e.vectors[k * n + i] * e.vectors[k * n + j])
                    .sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-10);
            }
        }
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn eigh_rejects_bad_input_by_name() {
        let err = eigh_named(&[1.0, 2.0], 2, "blocks.0.fc1: A").expect_err("short");
        assert!(err.to_string().contains("blocks.0.fc1: A"));
        let err = eigh_named(&[f64::NAN, 0.0, 0.0, 1.0], 2, "S").expect_err("nan");
        assert!(matches!(err, EkfacError::NonFinite(_)));
    }

    fn factors(n_s: usize, n_a: usize, rng: &mut StdRng) -> LayerFactors {
        let a = random_spd(n_a, rng);
        let s = random_spd(n_s, rng);
        LayerFactors {
            name: "l".into(),
            eig_a: eigh(&a, n_a).expect("a"),
            eig_s: eigh(&s, n_s).expect("s"),
            a,
            s,
            tokens: 30,
            tokens_per_example: 3.0,
            corrected: None,
            corrected_examples: 0,
            sketch_basis: None,
        }
    }

    /// KFAC preconditioning equals a dense solve with `(c·S⊗A + λI)`.
    #[test]
    fn kfac_apply_equals_dense_kronecker_solve() {
        let mut rng = StdRng::seed_from_u64(2);
        let (ds, da) = (3, 4);
        let f = factors(ds, da, &mut rng);
        let p = Preconditioner::new(&f, Strategy::Kfac, Damping::Absolute(0.3)).expect("p");
        let g: Vec<f64> = (0..ds * da).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = p.apply(&g).expect("apply");
        // Dense: F = c S ⊗ A acting on vec_row(G) (index i*da + j), F[(i,j),(k,l)] = c S_ik A_jl.
        let n = ds * da;
        let c = 3.0;
        let mut fx = vec![0.0; n];
        for i in 0..ds {
            for j in 0..da {
                let mut acc = 0.3 * x[i * da + j];
                for k in 0..ds {
                    for l in 0..da {
                        acc += c * f.s[i * ds + k] * f.a[j * da + l] * x[k * da + l];
                    }
                }
                fx[i * da + j] = acc;
            }
        }
        for (a, b) in fx.iter().zip(&g) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    /// `quadratic(G)` is `⟨G, apply(G)⟩` for every strategy (the norm used to normalise exact
    /// re-ranked scores), and rejects a gradient of the wrong size.
    #[test]
    fn quadratic_equals_the_inner_product_with_apply() {
        let mut rng = StdRng::seed_from_u64(9);
        let (ds, da) = (4, 3);
        let mut f = factors(ds, da, &mut rng);
        f.corrected = Some((0..ds * da).map(|_| rng.random_range(0.1..2.0)).collect());
        let g: Vec<f64> = (0..ds * da).map(|_| rng.random_range(-1.0..1.0)).collect();
        for strategy in [
            Strategy::Identity,
            Strategy::Diagonal,
            Strategy::Kfac,
            Strategy::Ekfac,
        ] {
            let p = Preconditioner::new(&f, strategy, Damping::Absolute(0.2)).expect("p");
            let want: f64 = g
                .iter()
                .zip(p.apply(&g).expect("apply"))
                .map(|(a, b)| a * b)
                .sum();
            let got = p.quadratic(&g).expect("quadratic");
            assert!(
                (got - want).abs() < 1e-12 * want.abs().max(1.0),
                "{strategy:?}: {got} vs {want}"
            );
            assert!(got > 0.0);
            assert!(p.quadratic(&g[1..]).is_err());
        }
    }

    /// The diagonal strategy divides by the diagonal of the dense EK-FAC matrix
    /// `(Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)ᵀ`, built entry by entry.
    #[test]
    fn diagonal_divides_by_the_dense_diagonal() {
        let mut rng = StdRng::seed_from_u64(4);
        let (ds, da) = (3, 2);
        let mut f = factors(ds, da, &mut rng);
        let lam: Vec<f64> = (0..ds * da).map(|_| rng.random_range(0.1..2.0)).collect();
        f.corrected = Some(lam.clone());
        let p = Preconditioner::new(&f, Strategy::Diagonal, Damping::Absolute(0.05)).expect("p");
        let g: Vec<f64> = (0..ds * da).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = p.apply(&g).expect("apply");
        let (qs, qa) = (&f.eig_s.vectors, &f.eig_a.vectors);
        for i in 0..ds {
            for j in 0..da {
                // F[(i,j),(i,j)] = Σ_kl (Q_S)_ik (Q_A)_jl Λ_kl (Q_S)_ik (Q_A)_jl
                let mut d = 0.0;
                for k in 0..ds {
                    for l in 0..da {
                        d += (qs[i * ds + k] * qa[j * da + l]).powi(2) * lam[k * da + l];
                    }
                }
                let want = g[i * da + j] / (d + 0.05);
                assert!((x[i * da + j] - want).abs() < 1e-12, "{i},{j}");
            }
        }
    }

    /// Rank r keeps the r largest singular directions: the error is the (r+1)-th singular value
    /// (in the spectral sense), checked on a matrix built from known singular values.
    #[test]
    fn low_rank_keeps_the_largest_singular_values() {
        // m = 5·e0 f0ᵀ + 3·e1 f1ᵀ + 1·e2 f2ᵀ, with e, f unit vectors (permuted axes).
        let (rows, cols) = (3, 4);
        let mut m = vec![0.0; rows * cols];
        m[2 * cols + 1] = 5.0;
        m[3] = 3.0;
        m[cols] = 1.0;
        let r2 = low_rank(&m, rows, cols, 2).expect("svd");
        let mut want = m.clone();
        want[cols] = 0.0;
        for (a, b) in r2.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{r2:?}");
        }
        assert_eq!(low_rank(&m, rows, cols, 3).expect("full"), m);
        assert!(low_rank(&m, rows, 3, 1).is_err());
    }

    #[test]
    fn relative_damping_is_a_tenth_of_the_mean() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut f = factors(2, 2, &mut rng);
        f.corrected = Some(vec![1.0, 2.0, 3.0, 6.0]);
        let p = Preconditioner::new(&f, Strategy::Ekfac, Damping::default()).expect("p");
        assert!((p.damping() - 0.3).abs() < 1e-12);
        f.corrected = Some(vec![1.0; 3]);
        assert!(Preconditioner::new(&f, Strategy::Ekfac, Damping::default()).is_err());
    }
}
