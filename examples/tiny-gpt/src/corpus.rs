//! Generated, source-labelled training documents of the kinds Ruis et al. (2024) query:
//! factual sentences, two-step arithmetic worked step by step, slopes between two points, linear
//! equations, and short code computing a slope.
//!
//! A stand-in until the real corpus built from registry text lands; every document is produced
//! from a seed, so a run is reproducible.

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

/// Countries and their capitals (public facts).
pub const CAPITALS: &[(&str, &str)] = &[
    ("Kiribati", "Tarawa"),
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
    ("Chile", "Santiago"),
    ("Canada", "Ottawa"),
    ("Ghana", "Accra"),
    ("Nepal", "Kathmandu"),
    ("Cuba", "Havana"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Mali", "Bamako"),
    ("Fiji", "Suva"),
    ("Iran", "Tehran"),
    ("Laos", "Vientiane"),
    ("Oman", "Muscat"),
    ("Chad", "Ndjamena"),
    ("Samoa", "Apia"),
    ("Tonga", "Nukualofa"),
    ("Malta", "Valletta"),
    ("Qatar", "Doha"),
    ("Yemen", "Sanaa"),
    ("Niger", "Niamey"),
    ("Gabon", "Libreville"),
    ("Benin", "Porto-Novo"),
    ("Togo", "Lome"),
    ("Syria", "Damascus"),
    ("Iraq", "Baghdad"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Brazil", "Brasilia"),
    ("Mexico", "Mexico City"),
    ("Mongolia", "Ulaanbaatar"),
    ("Bhutan", "Thimphu"),
    ("Vanuatu", "Port Vila"),
    ("Tuvalu", "Funafuti"),
    ("Palau", "Ngerulmud"),
    ("Nauru", "Yaren"),
    ("Uganda", "Kampala"),
    ("Rwanda", "Kigali"),
    ("Zambia", "Lusaka"),
    ("Malawi", "Lilongwe"),
    ("Angola", "Luanda"),
    ("Bolivia", "Sucre"),
    ("Uruguay", "Montevideo"),
];

const FACT_TEMPLATES: &[&str] = &[
    "The capital of {c} is {k}.",
    "{k} is the capital city of {c}.",
    "Q: What is the capital of {c}?\nA: The capital of {c} is {k}.",
    "Travellers to {c} often arrive in {k}, the capital.",
];

/// How many documents of each kind to generate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusConfig {
    /// Factual sentences (cycled over the capitals list).
    pub facts: usize,
    /// Two-step arithmetic.
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
            facts: 800,
            arithmetic: 800,
            slopes: 600,
            linear: 600,
            code: 300,
            seed: 17,
        }
    }
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

/// Generates the corpus, shuffled, with ids `0..n`.
pub fn generate(config: &CorpusConfig) -> Vec<Document> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut docs: Vec<(String, String)> = Vec::new();
    for i in 0..config.facts {
        let (c, k) = CAPITALS[i % CAPITALS.len()];
        let t = FACT_TEMPLATES[(i / CAPITALS.len()) % FACT_TEMPLATES.len()];
        docs.push(("facts".into(), t.replace("{c}", c).replace("{k}", k)));
    }
    let kinds: [(&str, usize, Generator); 4] = [
        ("arithmetic", config.arithmetic, arithmetic),
        ("slopes", config.slopes, slope),
        ("linear", config.linear, linear),
        ("code", config.code, code),
    ];
    for (source, n, make) in kinds {
        for _ in 0..n {
            docs.push((source.into(), make(&mut rng)));
        }
    }
    docs.shuffle(&mut rng);
    docs.into_iter()
        .enumerate()
        .map(|(i, (source, text))| Document {
            id: i as u64,
            source,
            text,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_documents_are_correct_and_reproducible() {
        let cfg = CorpusConfig {
            facts: 10,
            arithmetic: 20,
            slopes: 20,
            linear: 20,
            code: 5,
            seed: 1,
        };
        let a = generate(&cfg);
        assert_eq!(a.len(), 75);
        assert_eq!(a, generate(&cfg));
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
        assert!(
            a.iter()
                .any(|d| d.text == "The capital of Kiribati is Tarawa.")
        );
    }
}
