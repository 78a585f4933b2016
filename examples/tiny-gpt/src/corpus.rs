//! The training corpus: real text from the package registries, labelled with its source
//! (WordNet glosses, country and element facts, FOLDOC, GSM8K and competition maths with worked
//! solutions, Python/Rust sources, HumanEval, the Python and Perl FAQs, Shakespeare, fortunes;
//! bundled as `data/corpus.jsonl.zst`, rebuilt by `tools/build_corpus.py`, see `docs/data.md`),
//! plus generated procedural documents of the reasoning types Ruis et al. (2024) query: two-step
//! arithmetic worked step by step, slopes between two points, linear equations, and short code
//! computing a slope. Every choice is seeded, so a run is reproducible.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

/// One training document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Stable id (index in the corpus).
    pub id: u64,
    /// Source label.
    pub source: String,
    /// The text.
    pub text: String,
}

/// The bundled corpus of registry text (built by `tools/build_corpus.py`; see `docs/data.md`):
/// zstd-compressed JSON lines `{"source", "kind", "origin", "text"}`.
pub const BUNDLED: &[u8] = include_bytes!("../data/corpus.jsonl.zst");

/// What the corpus is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusConfig {
    /// At most this many documents of each registry source (a seeded sample; `usize::MAX`: all).
    pub registry_per_source: usize,
    /// Registry sources kept whole whatever `registry_per_source` says (the facts the queries
    /// ask about).
    #[serde(default)]
    pub registry_keep_all: Vec<String>,
    /// A corpus file in the bundled format to use instead of the bundled copy.
    #[serde(default)]
    pub registry_file: Option<PathBuf>,
    /// Two-step arithmetic worked step by step.
    pub arithmetic: usize,
    /// Slopes between two points.
    pub slopes: usize,
    /// Linear equations.
    pub linear: usize,
    /// Code computing a slope.
    pub code: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            // ≈ 500 k tokens in all with the procedural documents: two epochs of the CPU preset's
            // 600 steps, so that the model can learn what the queries ask.
            registry_per_source: 300,
            registry_keep_all: vec!["country-facts".into(), "elements".into()],
            registry_file: None,
            arithmetic: 800,
            slopes: 600,
            linear: 600,
            code: 300,
            seed: 17,
        }
    }
}

/// One line of the registry corpus file.
#[derive(Deserialize)]
struct RegistryLine {
    source: String,
    text: String,
}

/// Reads a registry corpus (zstd-compressed JSON lines); `name` is used in errors.
pub fn read_registry(bytes: &[u8], name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let raw = zstd::decode_all(bytes).with_context(|| format!("{name}: not a zstd stream"))?;
    let text = String::from_utf8(raw).with_context(|| format!("{name}: not UTF-8"))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let r: RegistryLine = serde_json::from_str(l)
                .with_context(|| format!("{name}: line {}: not a corpus record", i + 1))?;
            Ok((r.source, r.text))
        })
        .collect()
}

fn arithmetic(rng: &mut StdRng) -> String {
    let (a, b, c) = (
        rng.random_range(1..20),
        rng.random_range(1..20),
        rng.random_range(2..16),
    );
    let (op1, first) = if rng.random_bool(0.5) {
        ("+", a + b)
    } else {
        ("-", a - b)
    };
    let (op2, second) = if rng.random_bool(0.5) {
        ("*", first * c)
    } else {
        ("+", first + c)
    };
    format!(
        "Calculate the answer: ({a} {op1} {b}) {op2} {c}\nThink step-by-step.\nFirst, {a} {op1} {b} = {first}.\nThen, {first} {op2} {c} = {second}.\nThe answer is {second}."
    )
}

fn slope(rng: &mut StdRng) -> String {
    let (x1, y1) = (rng.random_range(-9..10), rng.random_range(-9..10));
    let run = rng.random_range(1..6);
    let m = rng.random_range(-4..5);
    let (x2, y2) = (x1 + run, y1 + m * run);
    format!(
        "What is the slope of the line through ({x1}, {y1}) and ({x2}, {y2})?\nThe rise is {y2} - ({y1}) = {}.\nThe run is {x2} - ({x1}) = {run}.\nThe slope is {} / {run} = {m}.",
        y2 - y1,
        y2 - y1
    )
}

fn linear(rng: &mut StdRng) -> String {
    let a = rng.random_range(1..10);
    let x = rng.random_range(1..15);
    let b = rng.random_range(1..60);
    let c = a * x + b;
    format!(
        "Solve for x: {a}x + {b} = {c}\nSubtract {b} from both sides: {a}x = {c} - {b} = {}.\nDivide by {a}: x = {} / {a} = {x}.\nThe answer is x = {x}.",
        c - b,
        c - b
    )
}

fn code(rng: &mut StdRng) -> String {
    let (x1, y1) = (rng.random_range(0..10), rng.random_range(0..10));
    let run = rng.random_range(1..5);
    let m = rng.random_range(-3..4);
    let (x2, y2) = (x1 + run, y1 + m * run);
    let name = ["slope", "gradient", "rise_over_run"][rng.random_range(0..3)];
    format!(
        "def {name}(x1, y1, x2, y2):\n    rise = y2 - y1\n    run = x2 - x1\n    return rise / run\n\nprint({name}({x1}, {y1}, {x2}, {y2}))  # {m}.0"
    )
}

/// A document generator of one kind.
type Generator = fn(&mut StdRng) -> String;

/// Builds the corpus: the registry documents (a seeded sample of at most
/// `registry_per_source` per source) and the generated procedural documents, shuffled, with ids
/// `0..n`.
pub fn generate(config: &CorpusConfig) -> anyhow::Result<Vec<Document>> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let registry = match &config.registry_file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("corpus file {}", p.display()))?;
            read_registry(&bytes, &p.display().to_string())?
        }
        None => read_registry(BUNDLED, "the bundled corpus (data/corpus.jsonl.zst)")?,
    };
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (source, text) in registry {
        by_source.entry(source).or_default().push(text);
    }
    let mut docs: Vec<(String, String)> = Vec::new();
    for (source, mut texts) in by_source {
        if texts.len() > config.registry_per_source && !config.registry_keep_all.contains(&source) {
            texts.shuffle(&mut rng);
            texts.truncate(config.registry_per_source);
        }
        docs.extend(texts.into_iter().map(|t| (source.clone(), t)));
    }
    let kinds: [(&str, usize, Generator); 4] = [
        ("arithmetic", config.arithmetic, arithmetic),
        ("slopes", config.slopes, slope),
        ("linear", config.linear, linear),
        ("slope-code", config.code, code),
    ];
    for (source, n, make) in kinds {
        for _ in 0..n {
            docs.push((source.into(), make(&mut rng)));
        }
    }
    docs.shuffle(&mut rng);
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(i, (source, text))| Document {
            id: i as u64,
            source,
            text,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_documents_are_correct_and_reproducible() {
        let cfg = CorpusConfig {
            registry_per_source: 3,
            registry_keep_all: vec!["elements".into()],
            registry_file: None,
            arithmetic: 20,
            slopes: 20,
            linear: 20,
            code: 5,
            seed: 1,
        };
        let a = generate(&cfg).expect("corpus");
        assert_eq!(a, generate(&cfg).expect("corpus"));
        let mut per_source: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &a {
            *per_source.entry(d.source.as_str()).or_default() += 1;
        }
        assert_eq!(per_source["arithmetic"], 20);
        assert_eq!(per_source["slope-code"], 5);
        let registry: Vec<_> = per_source
            .iter()
            .filter(|(s, _)| !["arithmetic", "slopes", "linear", "slope-code"].contains(s))
            .collect();
        assert!(registry.len() >= 10, "registry sources: {registry:?}");
        assert!(per_source["elements"] > 200, "kept whole");
        assert!(
            registry.iter().all(|(s, n)| **s == "elements" || **n == 3),
            "{registry:?}"
        );
        assert_eq!(
            a.len(),
            65 + per_source["elements"] + 3 * (registry.len() - 1)
        );
        assert!(a.iter().enumerate().all(|(i, d)| d.id == i as u64));
        for d in &a {
            if d.source == "linear" {
                // "Solve for x: {a}x + {b} = {c}" ... "The answer is x = {x}."
                let first = d.text.lines().next().expect("line");
                let nums: Vec<i64> = first
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("number"))
                    .collect();
                let x: i64 = d
                    .text
                    .rsplit("x = ")
                    .next()
                    .and_then(|s| s.trim_end_matches('.').parse().ok())
                    .expect("answer");
                assert_eq!(nums[0] * x + nums[1], nums[2], "{}", d.text);
            }
        }
    }

    #[test]
    fn the_bundled_corpus_holds_every_source_and_the_capital_facts() {
        let all = read_registry(BUNDLED, "bundled").expect("bundled corpus");
        assert!(all.len() > 5000, "{} documents", all.len());
        assert!(
            all.iter()
                .any(|(s, t)| s == "country-facts" && t == "The capital of France is Paris.")
        );
        assert!(all.iter().all(|(_, t)| !t.is_empty() && t.len() <= 400));
        let err = read_registry(b"not zstd", "x.zst").expect_err("garbage");
        assert!(err.to_string().contains("x.zst"), "{err}");
    }
}
