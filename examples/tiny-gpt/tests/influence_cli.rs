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

/// Queries short enough for the tiny preset's 64-token context, in the bundled format.
const QUERIES: &str = r#"{"id": "capital-france", "group": "factual", "task": "capitals", "prompt": "The capital of France is", "completion": " Paris.", "answer": "Paris", "steps": ["Paris"]}
{"id": "capital-japan", "group": "factual", "task": "capitals", "prompt": "Tokyo is the capital city of", "completion": " Japan.", "answer": "Japan", "steps": ["Japan"]}
{"id": "linear-1", "group": "reasoning", "task": "linear", "prompt": "Solve for x: 2x + 3 = 9\n", "completion": "2x = 6, x = 3.", "answer": "3", "steps": ["6", "3"]}
{"id": "linear-2", "group": "reasoning", "task": "linear", "prompt": "Solve for x: 3x + 1 = 13\n", "completion": "3x = 12, x = 4.", "answer": "4", "steps": ["12", "4"]}
"#;

#[test]
fn train_then_report_query_inspect_and_sketch() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("run");
    let queries = dir.path().join("q.jsonl");
    std::fs::write(&queries, QUERIES).expect("queries");

    // The main job: train with the hook, then answer the queries, score, analyse and report;
    // two model sizes on the same corpus, side by side.
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_tiny-gpt"))
        .args([
            "--preset",
            "tiny",
            "--steps",
            "12",
            "--compare-sizes",
            "--queries",
        ])
        .arg(&queries)
        .arg("--out")
        .arg(&out));
    assert!(ok, "{text}");
    assert_eq!(text.matches("answered 4 queries").count(), 2, "{text}");
    assert!(text.contains("report: "), "{text}");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("report").join("report.json")).expect("report.json"),
    )
    .expect("parse");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "two model sizes");
    assert_eq!(runs[1]["name"], "larger");
    let run0 = &runs[0];
    let sections = run0["queries"].as_array().expect("queries");
    // Every query's own answer, plus the reference of each wrong one.
    let model = sections
        .iter()
        .filter(|q| q["completion_kind"] == "model")
        .count();
    assert_eq!(model, 4);
    let wrong = sections
        .iter()
        .filter(|q| q["completion_kind"] == "model" && q["correct"] == false)
        .count();
    assert_eq!(sections.len(), 4 + wrong);
    let top = sections[0]["top"].as_array().expect("top");
    assert!(!top.is_empty());
    let scores: Vec<f64> = top
        .iter()
        .map(|r| r["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "top list sorted: {scores:?}"
    );
    assert!(
        !top[0]["tokens"].as_array().expect("tokens").is_empty(),
        "token-wise scores of the top documents"
    );
    let heat = run0["correlation"]["values"].as_array().expect("heatmap");
    assert_eq!(heat.len(), 4, "one row per model answer");
    for run in ["small", "larger"] {
        for table in ["queries", "answer_search", "source_multipliers"] {
            let csv = out
                .join("report")
                .join("tables")
                .join(run)
                .join(format!("{table}.csv"));
            assert!(csv.exists(), "{}", csv.display());
        }
    }
    let page = out.join("report").join("index.html");
    let html = std::fs::read_to_string(&page).expect("index.html");
    assert!(
        html.contains("capital-france"),
        "the page lists the queries"
    );
    render_in_chromium(&page, &top[0]["text"]);

    let store = out.join("store");
    for (file, check) in [
        ("r.json", "{"),
        ("r.csv", "query_id,list,rank"),
        ("r.arrow", "ARROW1"),
    ] {
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
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r.json")).expect("json"))
            .expect("parse");
    let q = &json["queries"][0];
    assert_eq!(q["id"], "capital-france");
    assert_eq!(q["extra"]["group"], "factual");
    let top = q["top"].as_array().expect("top");
    assert_eq!(top[0]["per_layer"].as_array().expect("layers").len(), 8);
    let per_layer: f64 = top[0]["per_layer"]
        .as_array()
        .expect("l")
        .iter()
        .map(|v| v.as_f64().expect("f"))
        .sum();
    let score = top[0]["score"].as_f64().expect("score");
    assert!(
        (per_layer - score).abs() <= 1e-9 * score.abs().max(1.0),
        "layer split sums to the score"
    );
    assert_eq!(
        json["windows"].as_array().expect("windows").len(),
        3,
        "12 steps, windows of 4"
    );

    // Exact re-ranking of each query's top and bottom 5 by sketch score.
    let rr = dir.path().join("rr.json");
    let (ok, text) = run(&mut influence(
        &["query", "--rerank", "5", "--top-k", "4", "--store"],
        &[
            &store,
            Path::new("--queries"),
            &queries,
            Path::new("--out"),
            &rr,
        ],
    ));
    assert!(ok, "{text}");
    assert!(
        text.contains("re-ranked") && text.contains("over 3 windows"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&rr).expect("json")).expect("parse");
    assert_eq!(json["ranking"], "exact");
    assert!(json["rerank"]["documents"].as_u64().expect("count") <= 4 * 10);
    let top = json["queries"][0]["top"].as_array().expect("top");
    assert_eq!(top.len(), 4);
    let exact: Vec<f64> = top
        .iter()
        .map(|r| r["exact"].as_f64().expect("exact score"))
        .collect();
    assert!(exact.windows(2).all(|w| w[0] >= w[1]), "{exact:?}");
    assert!(
        top.iter().all(|r| r["score"].is_f64()),
        "sketch scores ride along"
    );
    let (ok, text) = run(&mut influence(
        &["query", "--rerank", "0", "--store"],
        &[&store, Path::new("--queries"), &queries],
    ));
    assert!(!ok);
    assert!(text.contains("rerank"), "{text}");

    let (ok, text) = run(&mut influence(
        &["inspect", "--verify", "--store"],
        &[&store],
    ));
    assert!(ok, "{text}");
    assert!(text.contains("every checksum and decode OK"), "{text}");
    assert!(
        text.contains("checkpoints: 3 loaded with the model"),
        "each window's checkpoint loaded by the task (the store's parent describes the model): {text}"
    );

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

    // Fact tracing on the same run: every fact of the tiny corpus asked, ranked by influence
    // and by BM25; the lexical reference finds the stating documents (the relevance definition
    // and the ranking work), and every method ranks every stated fact.
    let (ok, text) = run(Command::new(env!("CARGO_BIN_EXE_facts"))
        .arg("--run")
        .arg(&out)
        .args(["--chunk", "5"]));
    assert!(ok, "{text}");
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("facts.json")).expect("facts.json"))
            .expect("parse facts");
    let n_facts = facts["facts"].as_u64().expect("facts");
    assert!(n_facts >= 2, "{facts}");
    let unstated = facts["unstated"].as_u64().expect("unstated");
    assert!(
        unstated < n_facts,
        "12 steps see some fact documents: {facts}"
    );
    let rows = facts["rows"].as_array().expect("rows");
    let all: Vec<&serde_json::Value> = rows.iter().filter(|r| r["form"] == "all").collect();
    assert_eq!(all.len(), 5, "four influence methods and BM25");
    let bm25 = all[4]["retrieval"]["mrr"].as_f64().expect("mrr");
    assert!(bm25 > 0.5, "BM25 MRR {bm25}");
    // A fact is ranked by every method or (never trained on) by none.
    let mut ranked = 0;
    for r in facts["ranks"].as_array().expect("ranks") {
        let got: Vec<bool> = r[1]
            .as_array()
            .expect("ranks")
            .iter()
            .map(|x| x.as_u64().is_some())
            .collect();
        assert!(got.iter().all(|&g| g == got[0]), "{r}");
        ranked += usize::from(got[0]);
    }
    assert_eq!(
        all[0]["retrieval"]["queries"].as_u64(),
        Some(ranked as u64),
        "the table counts the ranked queries"
    );
    assert!(out.join("facts.md").exists());
}

/// Loads the report page in headless Chromium: the figures and the queries' top documents must be
/// on the rendered page; a screenshot is saved next to it. CI installs Chromium (`.ci/run`);
/// elsewhere the check is skipped with a note when no Chromium is found.
fn render_in_chromium(page: &Path, top_text: &serde_json::Value) {
    let Some(_) = influence_report::browser::find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium to render the report (.ci/run installs Debian chromium)"
        );
        eprintln!("note: no Chromium found; the report page was not rendered");
        return;
    };
    let shot = page.with_file_name("screenshot.png");
    let dom = influence_report::browser::render(page, Some(&shot), (1280, 2400)).expect("render");
    for run in ["small", "larger"] {
        assert!(
            dom.contains(&format!("id=\"fig-correlation-{run}\"")),
            "the heatmap of {run} is on the page"
        );
    }
    assert!(
        dom.contains("class=\"top-doc"),
        "top documents are on the page"
    );
    // A line of the first query's top document, as the browser rendered it.
    let text = top_text.as_str().expect("text");
    let line = text.lines().find(|l| l.trim().len() > 3).expect("a line");
    let escaped = line
        .trim()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        dom.contains(&escaped) || dom.contains(line.trim()),
        "{line:?} not on the page"
    );
    let png = std::fs::metadata(&shot).expect("screenshot");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());
}
