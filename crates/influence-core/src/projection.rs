//! Seeded random projections.
//!
//! A projection for one side of one layer is a `d × k` matrix stored row-major (`values[i * k + j]`),
//! so that a row vector `x` (length `d`) is projected as `x · P` (length `k`). Entries have variance
//! `1/k`, which makes sketch inner products unbiased estimates of the full ones:
//! `E[⟨P_gᵀ X P_a, P_gᵀ Y P_a⟩] = ⟨X, Y⟩`.
//!
//! The generator is ChaCha8 keyed by `(seed, FNV-1a(layer name), side)`, so the matrices depend only
//! on the run's seed and the layer's name, never on the order in which layers were registered, and
//! they are stable across platforms and crate versions (both ChaCha8 and the bit-to-value mapping
//! below are fully specified here).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How projection entries are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    /// Entries `±1/√k` with equal probability (one random bit each).
    #[default]
    Rademacher,
    /// Entries `N(0, 1/k)` (Box–Muller on ChaCha8 uniforms).
    Gaussian,
    /// The identity (`k` must equal `d`): the sketch is the exact per-example gradient.
    /// For tests and for exact-gradient ("full rank") stores of small models.
    Identity,
}

/// Which side of a layer a projection acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// `P_a`, acting on layer inputs `a_t` (with the bias 1 appended).
    Input,
    /// `P_g`, acting on output gradients `g_t`.
    Output,
}

/// One seeded projection matrix, `d × k`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// Input dimension (rows).
    pub d: usize,
    /// Sketch dimension (columns).
    pub k: usize,
    /// `d * k` values, row-major.
    pub values: Vec<f32>,
}

/// FNV-1a, 64 bit: a stable hash of layer names (std's hasher is randomised per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A uniform draw in `(0, 1]` from the top 53 bits of a `u64`.
fn unit_open(bits: u64) -> f64 {
    ((bits >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

impl Projection {
    /// Generates the projection of `side` of layer `layer` for a run seeded with `seed`.
    ///
    /// Returns `None` when `d` or `k` is zero, or for [`ProjectionKind::Identity`] when `k != d`.
    pub fn generate(
        kind: ProjectionKind,
        seed: u64,
        layer: &str,
        side: Side,
        d: usize,
        k: usize,
    ) -> Option<Self> {
        if d == 0 || k == 0 {
            return None;
        }
        let values = match kind {
            ProjectionKind::Identity => {
                if k != d {
                    return None;
                }
                let mut v = vec![0.0f32; d * k];
                for i in 0..d {
                    v[i * k + i] = 1.0;
                }
                v
            }
            ProjectionKind::Rademacher | ProjectionKind::Gaussian => {
                let side_tag: u64 = match side {
                    Side::Input => 0x41,
                    Side::Output => 0x47,
                };
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&seed.to_le_bytes());
                key[8..16].copy_from_slice(&fnv1a(layer.as_bytes()).to_le_bytes());
                key[16..24].copy_from_slice(&side_tag.to_le_bytes());
                key[24..32].copy_from_slice(&(d as u64 ^ ((k as u64) << 32)).to_le_bytes());
                let mut rng = ChaCha8Rng::from_seed(key);
                let scale = 1.0 / (k as f64).sqrt();
                let n = d * k;
                let mut v = Vec::with_capacity(n);
                if kind == ProjectionKind::Rademacher {
                    while v.len() < n {
                        let mut word = rng.next_u64();
                        for _ in 0..64.min(n - v.len()) {
                            let sign = if word & 1 == 1 { 1.0 } else { -1.0 };
                            v.push((sign * scale) as f32);
                            word >>= 1;
                        }
                    }
                } else {
                    while v.len() < n {
                        let u1 = unit_open(rng.next_u64());
                        let u2 = unit_open(rng.next_u64());
                        let r = (-2.0 * u1.ln()).sqrt() * scale;
                        let t = std::f64::consts::TAU * u2;
                        v.push((r * t.cos()) as f32);
                        if v.len() < n {
                            v.push((r * t.sin()) as f32);
                        }
                    }
                }
                v
            }
        };
        Some(Self { d, k, values })
    }

    /// `x · P` for one row vector `x` of length `d` (host reference, used by tests and the analyzer).
    pub fn apply_row(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.k];
        for (i, &xi) in x.iter().enumerate().take(self.d) {
            let row = &self.values[i * self.k..(i + 1) * self.k];
            for (o, &p) in out.iter_mut().zip(row) {
                *o += xi * p;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rademacher_entries_are_plus_minus_one_over_sqrt_k() {
        let p = Projection::generate(ProjectionKind::Rademacher, 1, "l", Side::Input, 50, 16)
            .expect("sizes");
        let s = 0.25f32;
        assert!(p.values.iter().all(|&v| v == s || v == -s));
        let pos = p.values.iter().filter(|&&v| v > 0.0).count();
        // 800 fair coins: 400 ± 5σ (σ ≈ 14).
        assert!((330..=470).contains(&pos), "{pos}");
    }

    #[test]
    fn seed_layer_and_side_all_change_the_matrix() {
        let base = Projection::generate(ProjectionKind::Gaussian, 7, "a", Side::Input, 9, 4);
        let other_seed = Projection::generate(ProjectionKind::Gaussian, 8, "a", Side::Input, 9, 4);
        let other_layer = Projection::generate(ProjectionKind::Gaussian, 7, "b", Side::Input, 9, 4);
        let other_side = Projection::generate(ProjectionKind::Gaussian, 7, "a", Side::Output, 9, 4);
        assert_ne!(base, other_seed);
        assert_ne!(base, other_layer);
        assert_ne!(base, other_side);
        assert_eq!(
            base,
            Projection::generate(ProjectionKind::Gaussian, 7, "a", Side::Input, 9, 4)
        );
    }

    #[test]
    fn gaussian_has_variance_one_over_k() {
        let k = 16;
        let p = Projection::generate(ProjectionKind::Gaussian, 3, "x", Side::Output, 4096, k)
            .expect("sizes");
        let n = p.values.len() as f64;
        let mean = p.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = p
            .values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        // 65 536 draws: the variance estimate has relative sd ≈ √(2/n) ≈ 0.6 %; allow 3 %.
        assert!((var * k as f64 - 1.0).abs() < 0.03, "{var}");
        assert!(mean.abs() < 0.01, "{mean}");
    }

    const GOLDEN_GAUSSIAN: [f32; 8] = [
        0.016462076,
        -1.0408995,
        0.19184865,
        -0.1981865,
        -0.08146704,
        -0.3296793,
        -0.021606043,
        0.09860898,
    ];

    const GOLDEN_SIGNS: [i8; 8] = [1, 1, -1, -1, -1, -1, 1, 1];

    #[test]
    fn golden_prefix_is_stable() {
        // Pinned values: a change here silently invalidates every store already written.
        let p = Projection::generate(ProjectionKind::Rademacher, 0, "layer", Side::Input, 2, 4)
            .expect("sizes");
        let signs: Vec<i8> = p
            .values
            .iter()
            .map(|&v| if v > 0.0 { 1 } else { -1 })
            .collect();
        let again = Projection::generate(ProjectionKind::Rademacher, 0, "layer", Side::Input, 2, 4)
            .expect("sizes");
        assert_eq!(p, again);
        assert_eq!(signs.len(), 8);
        assert_eq!(fnv1a(b"layer"), 9_575_673_069_376_539_734);
        assert_eq!(signs, GOLDEN_SIGNS);
    }

    /// The Gaussian projection's first values for one seed, layer and size, pinned: a change of
    /// the RNG, the Box–Muller mapping or the key would silently change every Gaussian store's
    /// projections. 1e-6 relative allows a last-ulp difference of `ln`/`cos`/`sin` between
    /// platforms' libm, nothing more.
    #[test]
    fn gaussian_golden_prefix_is_stable() {
        let p = Projection::generate(ProjectionKind::Gaussian, 0, "layer", Side::Input, 2, 4)
            .expect("sizes");
        let golden: [f32; 8] = GOLDEN_GAUSSIAN;
        for (i, (&got, &want)) in p.values.iter().zip(&golden).enumerate() {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "item {i}: {got:e} vs pinned {want:e} (all: {:?})",
                p.values
            );
        }
        assert_eq!(p.values.len(), 8);
    }

    #[test]
    fn identity_requires_square() {
        assert!(
            Projection::generate(ProjectionKind::Identity, 0, "l", Side::Input, 3, 2).is_none()
        );
        let p = Projection::generate(ProjectionKind::Identity, 0, "l", Side::Input, 3, 3)
            .expect("square");
        assert_eq!(p.apply_row(&[1.0, 2.0, 3.0]), vec![1.0, 2.0, 3.0]);
    }
}
