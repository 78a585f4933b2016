//! The `influence` command on a store the example wrote: `tiny-gpt` trains and answers queries,
//! `influence query` writes JSON, CSV and Arrow, `inspect --verify` reads every file, `sketch`
//! writes a post-hoc store that `query` answers from, and bad input gives errors that name it.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn influence(args: &[&str], paths: &[&Path]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_influence"));
    c.args(args).args(paths).env("RUST_BACKTRACE", "0");
    c
}

/// Queries short enough for the tiny preset's 64-token context.
const QUERIES: &str = r#"{"id": "fact-france", "group": "factual", "prompt": "The capital of France is", "completion": " Paris."}
{"id": "fact-japan", "group": "factual", "prompt": "Tokyo is the capital city of", "completion": " Japan."}
"#;

#[test]
fn train_then_query_inspect_and_sketch() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("run");
    let queries = dir.path().join("q.jsonl");
    std::fs::write(&queries, QUERIES).expect("queries");

    // The main job: train with the hook, then answer the queries from the store.
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_tiny-gpt"))
        .args(["--preset", "tiny", "--steps", "12", "--queries"])
        .arg(&queries)
        .arg("--out")
        .arg(&out));
    assert!(ok, "{text}");
    assert!(text.contains("fact-france"), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("influence.json")).expect("json"))
            .expect("parse");
    let q = &report["queries"][0];
    assert_eq!(q["id"], "fact-france");
    assert_eq!(q["extra"]["group"], "factual");
    let top = q["top"].as_array().expect("top");
    assert!(!top.is_empty());
    let scores: Vec<f64> = top
        .iter()
        .map(|r| r["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "top list sorted: {scores:?}"
    );
    assert_eq!(top[0]["per_layer"].as_array().expect("layers").len(), 8);
    let per_layer: f64 = top[0]["per_layer"]
        .as_array()
        .expect("l")
        .iter()
        .map(|v| v.as_f64().expect("f"))
        .sum();
    assert!(
        (per_layer - scores[0]).abs() <= 1e-9 * scores[0].abs().max(1.0),
        "layer split sums to the score"
    );
    assert_eq!(
        report["windows"].as_array().expect("windows").len(),
        3,
        "12 steps, windows of 4"
    );

    let store = out.join("store");
    for (file, check) in [("r.csv", "query_id,list,rank"), ("r.arrow", "ARROW1")] {
        let path = dir.path().join(file);
        let (ok, text) = run(&mut influence(
            &["query", "--top-k", "4", "--token-wise", "1", "--store"],
            &[
                &store,
                Path::new("--queries"),
                &queries,
                Path::new("--out"),
                &path,
            ],
        ));
        assert!(ok, "{text}");
        let bytes = std::fs::read(&path).expect("output");
        assert!(bytes.starts_with(check.as_bytes()), "{file}");
    }

    let (ok, text) = run(&mut influence(
        &["inspect", "--verify", "--store"],
        &[&store],
    ));
    assert!(ok, "{text}");
    assert!(text.contains("every checksum and decode OK"), "{text}");

    // Post hoc at the final model, then query that store.
    let posthoc = dir.path().join("posthoc");
    let (ok, text) = run(&mut influence(
        &["sketch", "--limit", "40", "--checkpoint"],
        &[
            &out.join("model.bpk"),
            Path::new("--model"),
            &out,
            Path::new("--out"),
            &posthoc,
        ],
    ));
    assert!(ok, "{text}");
    assert!(text.contains("sketched 40 documents"), "{text}");
    let (ok, text) = run(&mut influence(
        &["query", "--strategy", "kfac", "--store"],
        &[
            &posthoc,
            Path::new("--queries"),
            &queries,
            Path::new("--model"),
            &out,
        ],
    ));
    assert!(ok, "{text}");
    assert!(text.contains("against 40 documents"), "{text}");

    // Errors name what is wrong.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"x\", \"prompt\": \"a\"}\n").expect("bad");
    let (ok, text) = run(&mut influence(
        &["query", "--store"],
        &[&store, Path::new("--queries"), &bad],
    ));
    assert!(!ok);
    assert!(
        text.contains("bad.jsonl:1") && text.contains("completion"),
        "{text}"
    );
    let (ok, text) = run(&mut influence(
        &["query", "--store"],
        &[dir.path(), Path::new("--queries"), &queries],
    ));
    assert!(!ok);
    assert!(text.contains("manifest"), "{text}");
    let (ok, text) = run(&mut influence(
        &["query", "--windows", "9", "--store"],
        &[&store, Path::new("--queries"), &queries],
    ));
    assert!(!ok);
    assert!(text.contains("window 9"), "{text}");
}
