//! A hand-made report: two runs, ten queries in three groups, documents full of markup.

#![allow(dead_code)]

use influence_report::{
    Cell, DocView, GroupCurve, Heatmap, LayerShare, Multiplier, QuerySection, ReportData,
    RunSection, Table, TokenScore,
};

/// A document that would run a script if it were not escaped.
pub const SCRIPT_DOC: &str =
    "fn main() {\n    if a < b && c > d { println!(\"<script>alert(1)</script>\"); }\n}\n";
/// A document with ampersands, both quotes and blank lines.
pub const QUOTES_DOC: &str =
    "Fish & chips cost 'five' \"dollars\".\n\n  Indented line: x <= 3 & y >= 4\n";
/// Markup in a table cell.
pub const CELL_MARKUP: &str = "<img src=x onerror=alert(2)>";

/// `(id, group, task)` of the ten queries; one id holds an ampersand.
pub const QUERIES: [(&str, &str, &str); 10] = [
    ("capital-france", "factual", "capitals"),
    ("capital-japan", "factual", "capitals"),
    ("boiling-point", "factual", "science"),
    ("q&a-author", "factual", "books"),
    ("slope-1", "reasoning", "slope"),
    ("slope-2", "reasoning", "slope"),
    ("linear-1", "reasoning", "linear"),
    ("linear-2", "reasoning", "linear"),
    ("copy-1", "control", "copy"),
    ("copy-2", "control", "copy"),
];

pub const SOURCES: [&str; 3] = ["wiki", "code", "math"];
pub const LAYERS: [&str; 4] = [
    "blocks.0.attn.qkv",
    "blocks.0.mlp.fc1",
    "blocks.1.attn.qkv",
    "blocks.1.mlp.fc1",
];

/// Splits `text` into tokens of up to 5 characters with scores of both signs.
pub fn tokens(text: &str, seed: f64) -> Vec<TokenScore> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(5)
        .enumerate()
        .map(|(i, c)| TokenScore {
            text: c.iter().collect(),
            score: ((i as f64 + seed) * 1.7).sin() * 1e-3,
        })
        .collect()
}

fn doc(rank: usize, q: usize, text: &str, score: f64, with_tokens: bool) -> DocView {
    DocView {
        rank,
        doc_id: (q * 100 + rank) as u64,
        source: SOURCES[(q + rank) % 3].to_string(),
        score,
        text: text.to_string(),
        tokens: if with_tokens {
            tokens(text, (q + rank) as f64)
        } else {
            Vec::new()
        },
    }
}

/// The plain text of top document `rank` (1-based) of query `q`.
pub fn top_text(q: usize, rank: usize) -> String {
    match rank {
        1 => SCRIPT_DOC.to_string(),
        2 => QUOTES_DOC.to_string(),
        _ => format!("Document {rank} for query {q}:\nplain words only\n"),
    }
}

fn queries(run: usize) -> Vec<QuerySection> {
    let mut out: Vec<QuerySection> = QUERIES
        .iter()
        .enumerate()
        .map(|(q, (id, group, task))| QuerySection {
            id: id.to_string(),
            group: group.to_string(),
            task: task.to_string(),
            prompt: format!("Question {q}: what is <b>{id}</b>?\n"),
            completion: format!(" The answer is \"{q}\" & done."),
            completion_kind: "model".into(),
            correct: if *group == "control" {
                None
            } else {
                Some(!(q + run).is_multiple_of(3))
            },
            answer: Some(format!("{q}")),
            nats: 1.5 + q as f64 * 0.1,
            answer_found: if q == 0 { None } else { Some(q % 2 == 0) },
            top: (1..=3)
                .map(|rank| doc(rank, q, &top_text(q, rank), 1.0 / rank as f64, rank != 3))
                .collect(),
            bottom: (1..=2)
                .map(|rank| {
                    doc(
                        rank,
                        q,
                        &format!("Bottom {rank} & <i>negative</i>\n"),
                        -0.5 / rank as f64,
                        rank == 1,
                    )
                })
                .collect(),
        })
        .collect();
    // The second run also scores the reference answer of a wrong completion.
    if run == 1 {
        let mut reference = out[4].clone();
        reference.id = "slope-1 (reference)".into();
        reference.completion_kind = "reference".into();
        reference.correct = Some(true);
        out.insert(5, reference);
    }
    out
}

fn heatmap() -> Heatmap {
    let n = QUERIES.len();
    let values = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j {
                        1.0
                    } else if QUERIES[i].1 == QUERIES[j].1 {
                        0.6 - 0.05 * (i + j) as f64 / n as f64
                    } else if i == 9 || j == 9 {
                        f64::NAN
                    } else {
                        -0.3 + 0.02 * ((i * j) % 7) as f64
                    }
                })
                .collect()
        })
        .collect();
    Heatmap {
        labels: QUERIES.iter().map(|q| q.0.to_string()).collect(),
        groups: QUERIES.iter().map(|q| q.1.to_string()).collect(),
        values,
    }
}

fn curves() -> Vec<GroupCurve> {
    ["factual", "reasoning", "control"]
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let percent: Vec<f64> = (1..=100).map(f64::from).collect();
            let relative: Vec<f64> = percent
                .iter()
                .map(|p| (p / 100.0).powf(0.3 + 0.3 * g as f64))
                .collect();
            GroupCurve {
                group: group.to_string(),
                absolute: relative.iter().map(|r| r * (2.0 + g as f64)).collect(),
                percent,
                relative,
            }
        })
        .collect()
}

fn multipliers() -> Vec<Multiplier> {
    let mut out = Vec::new();
    for side in ["top", "bottom"] {
        for k in [10, 50] {
            for (g, group) in ["factual", "reasoning", "control"].iter().enumerate() {
                for (s, source) in SOURCES.iter().enumerate() {
                    out.push(Multiplier {
                        group: group.to_string(),
                        side: side.into(),
                        k,
                        source: source.to_string(),
                        // One zero: a source absent from a top list.
                        multiplier: if g == 1 && s == 0 {
                            0.0
                        } else {
                            0.5 + (g * 3 + s) as f64 * 0.4
                        },
                    });
                }
            }
        }
    }
    out
}

fn layer_shares() -> Vec<LayerShare> {
    let mut out = Vec::new();
    for (g, group) in ["factual", "reasoning", "control"].iter().enumerate() {
        for (l, layer) in LAYERS.iter().enumerate() {
            out.push(LayerShare {
                group: group.to_string(),
                layer: layer.to_string(),
                share: 0.1 + 0.05 * ((g + l) % 4) as f64,
            });
        }
    }
    out
}

/// The `queries` table: one row per completion, with every kind of cell.
pub fn queries_table(qs: &[QuerySection]) -> Table {
    Table {
        name: "queries".into(),
        title: "Completions <scored> & graded".into(),
        columns: [
            "completion",
            "group",
            "rank",
            "nats",
            "correct",
            "mixed",
            "int_float",
            "empty",
            "note",
        ]
        .map(String::from)
        .to_vec(),
        rows: qs
            .iter()
            .enumerate()
            .map(|(i, q)| {
                vec![
                    Cell::Text(q.id.clone()),
                    Cell::Text(q.group.clone()),
                    Cell::Int(i as i64),
                    if i == 3 {
                        Cell::Empty
                    } else {
                        Cell::Number(q.nats)
                    },
                    q.correct.map_or(Cell::Empty, Cell::Bool),
                    if i % 2 == 0 {
                        Cell::Text("x".into())
                    } else {
                        Cell::Number(0.5)
                    },
                    if i % 2 == 0 {
                        Cell::Int(2)
                    } else {
                        Cell::Number(0.25)
                    },
                    Cell::Empty,
                    Cell::Text(match i {
                        0 => CELL_MARKUP.into(),
                        1 => "a, \"quoted\" note\nover two lines".into(),
                        _ => String::new(),
                    }),
                ]
            })
            .collect(),
    }
}

fn run(index: usize, name: &str) -> RunSection {
    let queries = queries(index);
    let pairs = Table {
        name: "correlation_summary".into(),
        title: "Mean r within and between groups".into(),
        columns: vec!["pair".into(), "mean_r".into(), "n".into()],
        rows: vec![
            vec![
                Cell::Text("factual/factual".into()),
                Cell::Number(0.55),
                Cell::Int(6),
            ],
            vec![
                Cell::Text("reasoning/reasoning".into()),
                Cell::Number(0.57),
                Cell::Int(6),
            ],
            vec![
                Cell::Text("factual/reasoning".into()),
                Cell::Number(-0.28),
                Cell::Int(16),
            ],
        ],
    };
    RunSection {
        name: name.into(),
        summary: vec![
            ("training steps".into(), format!("{}", 200 * (index + 1))),
            ("final loss".into(), "2.31".into()),
            ("documents".into(), "40".into()),
            ("sketch rows".into(), "1 234".into()),
            ("scoring time".into(), "0.8 s".into()),
        ],
        correlation: heatmap(),
        curves: curves(),
        multipliers: multipliers(),
        layer_shares: layer_shares(),
        tables: vec![queries_table(&queries), pairs],
        queries,
    }
}

/// The whole report.
pub fn report() -> ReportData {
    ReportData {
        title: "Which training documents shaped the answers <test>".into(),
        notes: vec![
            "Scores are EK-FAC influence & sums over windows.".into(),
            "A second note with 'quotes'.".into(),
        ],
        runs: vec![
            run(0, "small (4 blocks, d=128)"),
            run(1, "large (8 blocks, d=256)"),
        ],
    }
}

/// The slugs of the two runs.
pub const SLUGS: [&str; 2] = ["small-4-blocks-d-128", "large-8-blocks-d-256"];

/// The figure kinds drawn for each run.
pub const KINDS: [&str; 6] = [
    "correlation",
    "topk-absolute",
    "topk-relative",
    "multipliers-top",
    "multipliers-bottom",
    "layers",
];

/// Checks that every tag of an SVG (XML) document is closed in order; returns the tag count.
pub fn check_xml(text: &str) -> usize {
    let mut stack: Vec<String> = Vec::new();
    let mut count = 0;
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        let end = rest.find('>').expect("an unclosed tag");
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        count += 1;
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().expect("a closing tag without an opening one");
            assert_eq!(open, name.trim(), "mismatched tags");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().expect("a tag name");
            stack.push(name.to_string());
        }
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    count
}
