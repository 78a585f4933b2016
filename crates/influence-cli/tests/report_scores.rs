//! `influence report --scores FILE`: the report of a score matrix computed by another tool,
//! with no store and no model.

use std::path::Path;

use clap::Parser;
use influence_cli::{Cli, Command, report::ReportArgs};

const QUERIES: &str = r#"{"id": "peru", "group": "factual", "task": "capitals", "prompt": "The capital of Peru is", "completion": " Lima.", "answer": "Lima"}
{"id": "add1", "group": "reasoning", "task": "arithmetic", "prompt": "What is (2 + 3) * 4?", "completion": " First, 2 + 3 = 5.\nThen, 5 * 4 = 20.\nThe answer is 20.", "answer": "20", "steps": ["5", "20"], "nats": 3.5}
{"id": "add2", "group": "reasoning", "task": "arithmetic", "prompt": "What is (1 + 3) * 5?", "completion": " First, 1 + 3 = 4.\nThen, 4 * 5 = 20.\nThe answer is 20.", "answer": "20", "steps": ["4", "20"]}
"#;

/// Six documents; `peru`'s top document (id 30) states the fact, `add1`'s top (id 11) holds
/// both of its steps. Document 50 has no text. The column of `extra` scores no query of the
/// file and is ignored.
const SCORES: &str = "doc_id,source,text,score:peru,score:add1,score:add2,score:extra\n\
10,math,\"First, 2 + 3 = 5. Then 5 * 6 = 30, \"\"quoted\"\".\",0.1,0.9,0.7,0\n\
11,math,\"2 + 3 = 5 and 5 * 4 = 20\",0.05,1.5,0.2,0\n\
20,code,\"def add(a, b): return a + b\",-0.2,0.3,0.35,0\n\
30,facts,The capital of Peru is Lima.,2.5,-0.1,0.1,0\n\
40,facts,The capital of France is Paris.,0.4,0.0,-0.3,0\n\
50,web,,0.2,-0.5,0.6,0\n";

fn args(line: &[&str]) -> Result<ReportArgs, clap::Error> {
    let argv = ["influence", "report"].iter().chain(line).copied();
    match Cli::try_parse_from(argv)?.command {
        Command::Report(a) => Ok(a),
        other => panic!("not a report: {other:?}"),
    }
}

/// `report --scores SCORES --queries QUERIES --out OUT`, then `extra`.
fn scores_args(
    scores: &Path,
    queries: &Path,
    out: &Path,
    extra: &[&str],
) -> Result<ReportArgs, clap::Error> {
    let paths = [
        "--scores",
        scores.to_str().expect("utf-8"),
        "--queries",
        queries.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    let line: Vec<&str> = paths.iter().chain(extra).copied().collect();
    args(&line)
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("read report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

#[test]
fn a_csv_score_matrix_gets_the_whole_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scores = dir.path().join("kronfluence.csv");
    let queries = dir.path().join("queries.jsonl");
    let out = dir.path().join("report");
    std::fs::write(&scores, SCORES).expect("scores");
    std::fs::write(&queries, QUERIES).expect("queries");
    let a = scores_args(&scores, &queries, &out, &["--top-n", "2,1"])
        .expect("--store is not needed with --scores");
    influence_cli::report::run_scores(&a).expect("report");

    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    assert!(
        html.contains("computed by another tool"),
        "the note is on the page"
    );
    let report = json(&out.join("report.json"));
    let notes = report["notes"].as_array().expect("notes");
    let notes: Vec<&str> = notes.iter().filter_map(|n| n.as_str()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("kronfluence.csv") && n.contains("another tool")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.contains("Token-wise")), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.contains("2 of 3 completions")),
        "two queries have no nats: {notes:?}"
    );
    let run = &report["runs"][0];
    assert_eq!(run["name"], "kronfluence");
    let section = |id: &str| {
        run["queries"]
            .as_array()
            .expect("queries")
            .iter()
            .find(|q| q["id"] == format!("{id} (ref)"))
            .unwrap_or_else(|| panic!("no section for {id}"))
            .clone()
    };
    let peru = section("peru");
    assert_eq!(peru["completion_kind"], "reference");
    assert_eq!(peru["top"][0]["doc_id"], 30);
    assert_eq!(peru["top"][0]["text"], "The capital of Peru is Lima.");
    assert_eq!(peru["top"][0]["score"], 2.5);
    assert_eq!(peru["bottom"][0]["doc_id"], 20);
    assert_eq!(peru["answer_found"], true);
    let add1 = section("add1");
    assert_eq!(add1["top"][0]["doc_id"], 11);
    assert_eq!(add1["nats"], 3.5);
    assert_eq!(add1["answer_found"], true, "both steps in the top 2");
    // add2's top 2 (10 and 50): neither "4" nor "20" is in them (50 has no text).
    assert_eq!(section("add2")["answer_found"], false);
    assert_eq!(
        run["layer_shares"]
            .as_array()
            .expect("shares")
            .iter()
            .map(|s| s["layer"].as_str().unwrap_or(""))
            .collect::<std::collections::BTreeSet<_>>(),
        ["external"].into()
    );
    assert!(out.join("tables/kronfluence/queries.csv").exists());
}

#[test]
fn the_flags_that_need_a_model_or_store_are_refused() {
    let e = args(&["--queries", "q.jsonl", "--out", "o"]).expect_err("no --store nor --scores");
    assert!(e.to_string().contains("--store"), "{e}");
    for extra in [["--rerank", "10"], ["--store", "s"], ["--model", "m"]] {
        let mut line = vec!["--scores", "s.csv", "--queries", "q.jsonl", "--out", "o"];
        line.extend(extra);
        let e = args(&line).expect_err("conflict");
        assert!(
            e.to_string().contains("cannot be used with"),
            "{extra:?}: {e}"
        );
    }
}

#[test]
fn a_query_missing_from_the_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scores = dir.path().join("s.csv");
    let queries = dir.path().join("queries.jsonl");
    std::fs::write(&scores, "doc_id,source,score:peru\n1,a,0.5\n2,b,0.25\n").expect("scores");
    std::fs::write(&queries, QUERIES).expect("queries");
    let out = dir.path().join("out");
    let a = scores_args(&scores, &queries, &out, &[]).expect("args");
    let e = format!(
        "{:#}",
        influence_cli::report::run_scores(&a).expect_err("missing")
    );
    assert!(e.contains("s.csv") && e.contains("score:add1"), "{e}");
}
