//! What a user sets for scoring: [`ScoreConfig`] (serde, defaults, builder setters).

use influence_ekfac::{Damping, Strategy};
use serde::{Deserialize, Serialize};

use crate::AnalyzerError;

/// How queries are scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Curvature approximation: `ekfac` (default), `kfac`, `diagonal` or `identity`.
    pub strategy: Strategy,
    /// Damping; default `0.1 × mean(Λ)` per layer.
    pub damping: Damping,
    /// Keep only the top `rank` singular directions of each preconditioned query gradient.
    pub rank: Option<usize>,
    /// Documents kept at the top of each query's ranking.
    pub top_k: usize,
    /// Documents kept at the bottom (most negative) of each query's ranking.
    pub bottom_k: usize,
    /// Weight each row by the learning rate of its step (TracIn-style).
    pub lr_weighting: bool,
    /// Unit-normalise every stored row (one document's gradient at one step, all layers
    /// together) in the scoring metric before it is scored: the score becomes the cosine
    /// (TrackStar-style) up to the query's own norm, a per-query constant that changes no
    /// ranking. The metric is the one the query is preconditioned with — `Σ_c K_c² / (Λ_c + λ)`
    /// for eigenbasis coordinates under EK-FAC, `Σ_c K_c²` under identity and for
    /// random-projection sketches (whose preconditioner lives in the full space).
    ///
    /// On by default: chosen by measurement (`docs/accuracy.md` (v)). At the default 40×30 i8
    /// store it is the one configuration that meets every accuracy target — fact-tracing MRR
    /// 0.941 against 0.780 for plain scores, whose rankings a few long, high-gradient-norm
    /// documents top for almost every query — and it keeps LDS and removal at the plain
    /// scores' level. `false` gives the plain inner product `q̃ᵀ K` (the quantity the
    /// exactness tests check against a dense solve). Token-wise influence
    /// ([`crate::TokenScorer`]) always splits the plain score of a document at one checkpoint;
    /// normalising divides all of that row's tokens by the same positive number, so the split's
    /// shape is the same either way.
    pub normalize: bool,
    /// For windows sketched with random projections: fit the curvature *inside* the sketch
    /// space (LoGra-style) — `F_s = mean over the window's stored rows of vec(K) vec(K)ᵀ` per
    /// layer (`k_g·k_a` square, one extra pass over the window's shards), damped with
    /// [`ScoreConfig::damping`] relative to its mean eigenvalue and inverted — instead of
    /// preconditioning the query in the full space and projecting it. The query is projected
    /// raw, then multiplied by `(F_s + λI)⁻¹`. Ignored for eigenbasis windows (their curvature
    /// already lives on the kept coordinates); only with the `ekfac` strategy.
    pub sketch_curvature: bool,
    /// Windows to score (default: every complete window).
    pub windows: Option<Vec<u32>>,
    /// Queries per forward/backward pass when computing query gradients.
    pub query_batch: usize,
    /// Threads decoding shards (0: one per core, at most 8).
    pub decode_threads: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ekfac,
            damping: Damping::RelativeToMean(0.1),
            rank: None,
            top_k: 20,
            bottom_k: 20,
            lr_weighting: false,
            normalize: true,
            sketch_curvature: false,
            windows: None,
            query_batch: 8,
            decode_threads: 0,
        }
    }
}

impl ScoreConfig {
    /// Sets the strategy.
    pub fn strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }

    /// Sets the damping.
    pub fn damping(mut self, d: Damping) -> Self {
        self.damping = d;
        self
    }

    /// Sets the top-k size.
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Turns row normalisation ([`ScoreConfig::normalize`]) on or off.
    pub fn normalize(mut self, on: bool) -> Self {
        self.normalize = on;
        self
    }

    /// Turns sketch-space curvature ([`ScoreConfig::sketch_curvature`]) on or off.
    pub fn sketch_curvature(mut self, on: bool) -> Self {
        self.sketch_curvature = on;
        self
    }

    /// Turns learning-rate weighting on or off.
    pub fn lr_weighting(mut self, on: bool) -> Self {
        self.lr_weighting = on;
        self
    }

    /// Checks every field; errors name it.
    pub fn validate(&self) -> Result<(), AnalyzerError> {
        let bad = |name: &str, m: String| Err(AnalyzerError::argument(name, m));
        match self.damping {
            Damping::RelativeToMean(f) | Damping::Absolute(f) if !(f.is_finite() && f > 0.0) => {
                return bad("damping", format!("must be positive and finite, got {f}"));
            }
            _ => {}
        }
        if self.rank == Some(0) {
            return bad("rank", "must be at least 1".into());
        }
        if self.sketch_curvature && (self.rank.is_some() || self.strategy != Strategy::Ekfac) {
            return bad(
                "sketch_curvature",
                "fits its own curvature: use it with the ekfac strategy and without rank".into(),
            );
        }
        if self.query_batch == 0 {
            return bad("query_batch", "must be at least 1".into());
        }
        if self.windows.as_ref().is_some_and(Vec::is_empty) {
            return bad("windows", "an empty list selects nothing".into());
        }
        Ok(())
    }

    /// Decode threads to use: `decode_threads`, or one per core (at most 8) when 0.
    pub fn decode_threads_or_default(&self) -> usize {
        if self.decode_threads > 0 {
            self.decode_threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
        }
    }
}
