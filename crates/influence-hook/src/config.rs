//! What a user sets: [`HookConfig`] (serde, with defaults and builder methods).

use influence_core::{
    CoordinateSelection, FisherLabels, LossReduction, ProjectionKind, SketchScheme,
};
use serde::{Deserialize, Serialize};

use crate::HookError;

/// Sketch size of the layers whose name matches `pattern` (`*` matches any run of characters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchSize {
    /// Layer-name pattern, e.g. `blocks.*.mlp.*`.
    pub pattern: String,
    /// Input-side sketch size.
    pub k_a: usize,
    /// Output-side sketch size.
    pub k_g: usize,
}

/// Configuration of the training-time hook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// Layer-name patterns to track (`*` wildcards); empty means every [`crate::TrackedLinear`].
    pub include: Vec<String>,
    /// Layer-name patterns never to track, applied after `include`.
    pub exclude: Vec<String>,
    /// Default sketch size on the input side.
    pub k_a: usize,
    /// Default sketch size on the output side.
    pub k_g: usize,
    /// Per-layer overrides; the first matching pattern wins.
    pub sketch_sizes: Vec<SketchSize>,
    /// Seed of every projection (recorded in the run info).
    pub projection_seed: u64,
    /// How projection entries are drawn.
    pub projection: ProjectionKind,
    /// How sketches are projected: the coordinates of each window's gradients in the previous
    /// window's EK-FAC eigenbasis (the default, chosen by measurement in `docs/accuracy.md`), or
    /// seeded random projections for the whole run. `k_g × k_a` is the number of stored values
    /// per layer either way. With `projection = identity` (exact gradients) the scheme is moot
    /// and the run is recorded as random ([`HookConfig::effective_scheme`]).
    pub sketch_scheme: SketchScheme,
    /// How the training loss is reduced (the hook undoes it).
    pub loss_reduction: LossReduction,
    /// Steps per window: every `window_steps` steps the hook checkpoints and fits EK-FAC.
    pub window_steps: u64,
    /// Accumulate the covariance factors on every `factor_every`-th step of a window (the first
    /// step of a window always counts).
    pub factor_every: u64,
    /// Fraction of a factor step's tokens used for the factors (uniform sample), in `(0, 1]`.
    pub factor_token_fraction: f64,
    /// Batches kept (uniform reservoir over the window) and re-run at the window's checkpoint to
    /// fit the corrected eigenvalues; 0 disables the correction (KFAC eigenvalues are used).
    pub fit_batches: usize,
    /// Labels of the Fisher for the window fit.
    pub fisher: FisherLabels,
    /// Write per-document sketches.
    pub sketches: bool,
    /// Accumulate factors and close windows with EK-FAC fits.
    pub factors: bool,
    /// Seed of the hook's own sampling (reservoir, token subsample, sampled labels).
    pub seed: u64,
    /// What to do with a document whose captured inputs or output gradients hold NaN or ∞.
    pub non_finite: NonFinitePolicy,
}

/// What the hook does with a document of a step whose captured layer inputs or output
/// gradients hold NaN or ∞ (a loss spike, an overflowing step). Non-finite positions are zeroed
/// by selection, not multiplication (`0 × NaN = NaN` would spread to the other documents of the
/// sequence), so the rest of the step is captured exactly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NonFinitePolicy {
    /// Leave the document out of that step: no row is written and its tokens are not in the
    /// step's factors; each skip is logged (layer, document, step) and recorded in the store's
    /// manifest (`non_finite`). The hook fails once more than `max_fraction` of the documents
    /// seen so far were skipped (checked from `min_rows` documents on), or when every document
    /// of `max_bad_steps` consecutive steps was skipped — a run whose parameters have become NaN
    /// must not "succeed" with every row skipped.
    Skip {
        /// The largest share of skipped documents tolerated.
        max_fraction: f64,
        /// Documents seen before `max_fraction` is enforced.
        min_rows: u64,
        /// Consecutive steps with every document skipped that end the run.
        max_bad_steps: u64,
    },
    /// Fail at the first non-finite value, naming the step, document and layer.
    Fail,
}

impl Default for NonFinitePolicy {
    fn default() -> Self {
        Self::Skip {
            max_fraction: 0.01,
            min_rows: 1000,
            max_bad_steps: 3,
        }
    }
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            // 1,200 eigenbasis coordinates a layer: with the store's default i8 values, ≈ 950 B per
            // layer per document on disk — the 1 KB budget of docs/accuracy.md (v), filled.
            k_a: 40,
            k_g: 30,
            sketch_sizes: Vec::new(),
            projection_seed: 0x5eed,
            projection: ProjectionKind::Rademacher,
            sketch_scheme: SketchScheme::Eigenbasis {
                select: CoordinateSelection::Eigenvalue,
                max_side: 64,
            },
            loss_reduction: LossReduction::MeanOverTokens,
            window_steps: 200,
            factor_every: 10,
            factor_token_fraction: 1.0,
            fit_batches: 8,
            fisher: FisherLabels::Empirical,
            sketches: true,
            factors: true,
            seed: 0,
            non_finite: NonFinitePolicy::default(),
        }
    }
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $( $(#[$m])* pub fn $name(mut self, value: $ty) -> Self { self.$name = value; self } )*
    };
}

impl HookConfig {
    setters! {
        /// Sets [`HookConfig::include`].
        include: Vec<String>,
        /// Sets [`HookConfig::exclude`].
        exclude: Vec<String>,
        /// Sets [`HookConfig::k_a`].
        k_a: usize,
        /// Sets [`HookConfig::k_g`].
        k_g: usize,
        /// Sets [`HookConfig::sketch_sizes`].
        sketch_sizes: Vec<SketchSize>,
        /// Sets [`HookConfig::projection_seed`].
        projection_seed: u64,
        /// Sets [`HookConfig::projection`].
        projection: ProjectionKind,
        /// Sets [`HookConfig::sketch_scheme`].
        sketch_scheme: SketchScheme,
        /// Sets [`HookConfig::loss_reduction`].
        loss_reduction: LossReduction,
        /// Sets [`HookConfig::window_steps`].
        window_steps: u64,
        /// Sets [`HookConfig::factor_every`].
        factor_every: u64,
        /// Sets [`HookConfig::factor_token_fraction`].
        factor_token_fraction: f64,
        /// Sets [`HookConfig::fit_batches`].
        fit_batches: usize,
        /// Sets [`HookConfig::fisher`].
        fisher: FisherLabels,
        /// Sets [`HookConfig::sketches`].
        sketches: bool,
        /// Sets [`HookConfig::factors`].
        factors: bool,
        /// Sets [`HookConfig::seed`].
        seed: u64,
        /// Sets [`HookConfig::non_finite`].
        non_finite: NonFinitePolicy,
    }

    /// The scheme the hook applies: [`HookConfig::sketch_scheme`], except that identity
    /// projections (full-rank exact gradients) are never rotated.
    pub fn effective_scheme(&self) -> SketchScheme {
        if self.projection == ProjectionKind::Identity {
            SketchScheme::Random
        } else {
            self.sketch_scheme
        }
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), HookError> {
        let bad = |field: &str, why: String| Err(HookError::Config(format!("{field}: {why}")));
        if self.k_a == 0 || self.k_g == 0 {
            return bad("k_a/k_g", "sketch sizes must be positive".into());
        }
        if let NonFinitePolicy::Skip {
            max_fraction,
            max_bad_steps,
            ..
        } = self.non_finite
            && (!(0.0..=1.0).contains(&max_fraction) || max_bad_steps == 0)
        {
            return bad(
                "non_finite",
                format!(
                    "max_fraction must be in [0, 1] and max_bad_steps at least 1, got \
                     {max_fraction} and {max_bad_steps}"
                ),
            );
        }
        for s in &self.sketch_sizes {
            if s.k_a == 0 || s.k_g == 0 {
                return bad(
                    "sketch_sizes",
                    format!("pattern {:?} has a zero size", s.pattern),
                );
            }
        }
        if let SketchScheme::Eigenbasis { max_side, .. } = self.effective_scheme() {
            let sizes = std::iter::once((self.k_a, self.k_g))
                .chain(self.sketch_sizes.iter().map(|s| (s.k_a, s.k_g)));
            for (k_a, k_g) in sizes {
                if max_side < k_a.max(k_g) {
                    return bad(
                        "sketch_scheme.max_side",
                        format!(
                            "{max_side} eigenvectors a side cannot hold {k_g} × {k_a} coordinates \
                             (needs at least {})",
                            k_a.max(k_g)
                        ),
                    );
                }
            }
            if !self.factors {
                return bad(
                    "sketch_scheme",
                    "eigenbasis sketches need the window factors (factors = true)".into(),
                );
            }
        }
        if self.window_steps == 0 {
            return bad("window_steps", "must be at least 1".into());
        }
        if self.factor_every == 0 {
            return bad("factor_every", "must be at least 1".into());
        }
        if !(self.factor_token_fraction > 0.0 && self.factor_token_fraction <= 1.0) {
            return bad(
                "factor_token_fraction",
                format!("must lie in (0, 1], got {}", self.factor_token_fraction),
            );
        }
        Ok(())
    }

    /// Whether a layer of this name is tracked.
    pub fn selects(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob(p, name)))
            && !self.exclude.iter().any(|p| glob(p, name))
    }

    /// `(k_a, k_g)` for a layer of this name.
    pub fn sketch_size(&self, name: &str) -> (usize, usize) {
        self.sketch_sizes
            .iter()
            .find(|s| glob(&s.pattern, name))
            .map_or((self.k_a, self.k_g), |s| (s.k_a, s.k_g))
    }
}

/// `*`-wildcard match of a whole name.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_whole_names() {
        assert!(glob("blocks.*.mlp.*", "blocks.3.mlp.fc1"));
        assert!(!glob("blocks.*.mlp.*", "blocks.3.attn.qkv"));
        assert!(glob("*", "anything"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn selection_and_sizes() {
        let c = HookConfig::default()
            .exclude(vec!["*.attn.*".into()])
            .sketch_sizes(vec![SketchSize {
                pattern: "*.fc2".into(),
                k_a: 32,
                k_g: 8,
            }]);
        assert!(c.selects("blocks.0.mlp.fc1"));
        assert!(!c.selects("blocks.0.attn.qkv"));
        assert_eq!(c.sketch_size("blocks.1.mlp.fc2"), (32, 8));
        assert_eq!(c.sketch_size("blocks.1.mlp.fc1"), (40, 30));
    }

    #[test]
    fn validation_names_the_field() {
        let e = HookConfig::default().factor_token_fraction(0.0).validate();
        assert!(
            e.expect_err("invalid")
                .to_string()
                .contains("factor_token_fraction")
        );
        let e = HookConfig::default().window_steps(0).validate();
        assert!(e.expect_err("invalid").to_string().contains("window_steps"));
        let json = r#"{"k_a": 8, "window_step": 3}"#;
        let e = serde_json::from_str::<HookConfig>(json).expect_err("unknown field");
        assert!(e.to_string().contains("window_step"));
    }
}
