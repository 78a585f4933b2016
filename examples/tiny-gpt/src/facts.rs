//! Fact tracing: for every fact of the corpus's fact sources (each country's capital, each
//! element's symbol), a factual query whose reference completion is the fact, and the rank of
//! the first training document that states it — by influence and, as the reference row, by a
//! BM25 text search over the same documents.
//!
//! Definitions (the only place they are made):
//! * **the fact pool** ([`fact_pool`]): every `country-facts` document of the exact form
//!   `The capital of {country} is {capital}.` and every `elements` document of the form
//!   `The chemical symbol of {element} is {symbol}.` — one fact per distinct pair;
//! * **the queries** ([`fact_queries`]): a capital is asked in both forms of the bundled query
//!   file (`Q: What is the capital of {country}?\nA:` → ` The capital of {country} is
//!   {capital}.`, and `The capital of {country} is` → ` {capital}.`), a symbol as `{symbol} is
//!   the chemical symbol of` → ` {element}.` (a form the corpus never uses: the corpus says
//!   `The chemical symbol of {element} is {symbol}.`);
//! * **a document states a fact** ([`states`]) when it contains the subject and the answer,
//!   each as a whole word or phrase, case-sensitively (so the symbol `In` is not found in
//!   `in`);
//! * **rank**: 1-based position of the first stating document in the query's ranking (ties
//!   broken by document order, as [`influence_analyzer::scorer::top_k`] does); **MRR** the mean
//!   of 1/rank; **recall@k** the share of queries whose first stating document is in the top k.
//!
//! Influence scores use no lexical information; only BM25 reads the text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use burn::tensor::Device;
use influence_analyzer::{Document, Query, ScoreConfig, Strategy, Task, analyze};
use influence_store::Store;
use serde::Serialize;

use crate::task::GptTask;

/// One fact: a subject, its answer, and which source states it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Fact {
    /// `capital` or `symbol`.
    pub kind: &'static str,
    /// What the query names (a country, an element's symbol).
    pub subject: String,
    /// What the completion states (the capital, the element's name).
    pub answer: String,
}

/// Every fact stated by the corpus's fact sources (see the module docs), sorted.
pub fn fact_pool(docs: &[Document]) -> Vec<Fact> {
    let mut out = BTreeSet::new();
    for d in docs {
        let text = d.text.trim();
        let body = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|t| t.strip_suffix('.'))
                .and_then(|t| t.split_once(" is "))
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(" is "))
                .map(|(a, b)| (a.to_string(), b.to_string()))
        };
        match d.source.as_str() {
            "country-facts" => {
                if let Some((country, capital)) = body("The capital of ") {
                    out.insert(Fact {
                        kind: "capital",
                        subject: country,
                        answer: capital,
                    });
                }
            }
            "elements" => {
                if let Some((element, symbol)) = body("The chemical symbol of ") {
                    out.insert(Fact {
                        kind: "symbol",
                        subject: symbol,
                        answer: element,
                    });
                }
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// The query form of a fact query.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Form {
    /// `Q: What is the capital of X?\nA:` → ` The capital of X is Y.`
    Question,
    /// `The capital of X is` → ` Y.`
    Cloze,
    /// `S is the chemical symbol of` → ` E.`
    Symbol,
}

/// One query per fact and form (see the module docs); ids are unique.
pub fn fact_queries(facts: &[Fact]) -> Vec<(Query, usize, Form)> {
    let mut out = Vec::new();
    let mut used = BTreeMap::<String, usize>::new();
    let mut id = |base: String| {
        let n = used.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 { base } else { format!("{base}-{n}") }
    };
    for (i, f) in facts.iter().enumerate() {
        let slug: String = f
            .subject
            .chars()
            .map(|c| {
                if c.is_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let mut push = |form: Form, prompt: String, completion: String| {
            let tag = match form {
                Form::Question => "qa",
                Form::Cloze => "cloze",
                Form::Symbol => "symbol",
            };
            let mut extra = serde_json::Map::new();
            extra.insert("group".into(), "factual".into());
            extra.insert("answer".into(), f.answer.clone().into());
            let q = Query {
                id: id(format!("fact-{}-{slug}-{tag}", f.kind)),
                prompt,
                completion,
                extra,
            };
            out.push((q, i, form));
        };
        if f.kind == "capital" {
            let (s, a) = (&f.subject, &f.answer);
            push(
                Form::Question,
                format!("Q: What is the capital of {s}?\nA:"),
                format!(" The capital of {s} is {a}."),
            );
            push(
                Form::Cloze,
                format!("The capital of {s} is"),
                format!(" {a}."),
            );
        } else {
            push(
                Form::Symbol,
                format!("{} is the chemical symbol of", f.subject),
                format!(" {}.", f.answer),
            );
        }
    }
    out
}

/// Whether `phrase` occurs in `text` as a whole word or phrase, case-sensitively.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
    !phrase.is_empty()
        && text.match_indices(phrase).any(|(i, m)| {
            boundary(text[..i].chars().next_back()) && boundary(text[i + m.len()..].chars().next())
        })
}

/// Whether `text` states `fact`: subject and answer together, each as a whole phrase.
pub fn states(text: &str, fact: &Fact) -> bool {
    contains_phrase(text, &fact.subject) && contains_phrase(text, &fact.answer)
}

/// 1-based rank of the first document for which `relevant` holds, in descending `score` order
/// (ties by index); `None` when no document is relevant.
pub fn first_rank(scores: &[f64], relevant: &[bool]) -> Result<Option<usize>> {
    if scores.len() != relevant.len() {
        return Err(anyhow!(
            "{} scores for {} documents",
            scores.len(),
            relevant.len()
        ));
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(anyhow!("score {i} is NaN"));
    }
    let best = relevant
        .iter()
        .enumerate()
        .filter(|(_, r)| **r)
        .map(|(i, _)| i)
        .min_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    Ok(best.map(|b| {
        1 + scores
            .iter()
            .enumerate()
            .filter(|&(i, s)| *s > scores[b] || (*s == scores[b] && i < b))
            .count()
    }))
}

/// MRR and recall@k of a set of ranks (a missing rank counts as 0 and a miss).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Retrieval {
    /// Queries.
    pub queries: usize,
    /// Mean reciprocal rank.
    pub mrr: f64,
    /// Share with the first stating document at rank 1.
    pub recall_at_1: f64,
    /// Share with the first stating document in the top 10.
    pub recall_at_10: f64,
    /// Median rank (of the queries with a stating document).
    pub median_rank: f64,
}

/// Summarises ranks.
pub fn retrieval(ranks: &[Option<usize>]) -> Retrieval {
    let n = ranks.len().max(1) as f64;
    let mut found: Vec<usize> = ranks.iter().flatten().copied().collect();
    found.sort_unstable();
    let median = match found.len() {
        0 => f64::NAN,
        m if m % 2 == 1 => found[m / 2] as f64,
        m => (found[m / 2 - 1] + found[m / 2]) as f64 / 2.0,
    };
    Retrieval {
        queries: ranks.len(),
        mrr: ranks.iter().flatten().map(|&r| 1.0 / r as f64).sum::<f64>() / n,
        recall_at_1: ranks.iter().flatten().filter(|&&r| r == 1).count() as f64 / n,
        recall_at_10: ranks.iter().flatten().filter(|&&r| r <= 10).count() as f64 / n,
        median_rank: median,
    }
}

/// BM25 scores (`k1 = 1.2`, `b = 0.75`, English stemming and stop words; the `bm25` crate) of
/// every document for `query`; documents that share no term score 0.
pub fn bm25_scores(engine: &bm25::SearchEngine<u32>, n_docs: usize, query: &str) -> Vec<f64> {
    let mut out = vec![0.0; n_docs];
    for r in engine.search(query, None) {
        if let Some(s) = out.get_mut(r.document.id as usize) {
            *s = f64::from(r.score);
        }
    }
    out
}

/// A BM25 engine over `texts` (document `i` has id `i`).
pub fn bm25_engine(texts: &[&str]) -> bm25::SearchEngine<u32> {
    let docs: Vec<bm25::Document<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| bm25::Document::new(i as u32, *t))
        .collect();
    bm25::SearchEngineBuilder::<u32>::with_documents(bm25::Language::English, docs)
        .k1(1.2)
        .b(0.75)
        .build()
}

/// One scoring method of the fact-tracing table.
#[derive(Clone, Debug)]
pub struct Method {
    /// Its name in the table.
    pub name: String,
    /// How it scores.
    pub config: ScoreConfig,
}

/// The influence methods [`trace_facts`] compares by default: EK-FAC and identity, each with
/// rows normalised ([`ScoreConfig::normalize`], the scoring default) and plain.
pub fn default_methods() -> Vec<Method> {
    let m = |name: &str, config: ScoreConfig| Method {
        name: name.into(),
        config,
    };
    let plain = ScoreConfig::default().normalize(false);
    vec![
        m(
            "influence, EK-FAC, normalised rows (default)",
            ScoreConfig::default(),
        ),
        m("influence, EK-FAC, plain", plain.clone()),
        m(
            "influence, identity, normalised rows (cosine)",
            ScoreConfig::default().strategy(Strategy::Identity),
        ),
        m(
            "influence, identity, plain (gradient dot product)",
            plain.strategy(Strategy::Identity),
        ),
    ]
}

/// Sketch-space (LoGra-style) curvature, normalised rows and plain: the scoring for stores
/// written with random projections ([`ScoreConfig::sketch_curvature`]; eigenbasis windows ignore
/// it and score as [`default_methods`]' EK-FAC rows do).
pub fn sketch_curvature_methods() -> Vec<Method> {
    let on = ScoreConfig::default().sketch_curvature(true);
    vec![
        Method {
            name: "influence, sketch-space curvature (LoGra), normalised rows".into(),
            config: on.clone(),
        },
        Method {
            name: "influence, sketch-space curvature (LoGra), plain".into(),
            config: on.normalize(false),
        },
    ]
}

/// One row of the fact-tracing table.
#[derive(Clone, Debug, Serialize)]
pub struct FactRow {
    /// The method.
    pub method: String,
    /// The query form (`all` for every query).
    pub form: String,
    /// Its retrieval figures.
    pub retrieval: Retrieval,
}

/// What [`trace_facts`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct FactReport {
    /// Facts in the pool.
    pub facts: usize,
    /// Queries asked.
    pub queries: usize,
    /// Documents ranked (every document of the store).
    pub documents: usize,
    /// Facts stated by no stored document (a run that never trained on them): their queries
    /// are left out of the table (their ranks are `None`).
    pub unstated: usize,
    /// The table.
    pub rows: Vec<FactRow>,
    /// Per query: id, then the rank of its first stating document per method (BM25 last).
    pub ranks: Vec<(String, Vec<Option<usize>>)>,
    /// Seconds per method (BM25 last).
    pub seconds: Vec<f64>,
}

impl FactReport {
    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{} facts, {} queries, {} documents ranked ({} facts stated by no stored document, left out)\n\n\
             | method | queries | form | MRR | recall@1 | recall@10 | median rank |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
            self.facts, self.queries, self.documents, self.unstated
        );
        for r in &self.rows {
            let x = &r.retrieval;
            s += &format!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {} |\n",
                r.method, x.queries, r.form, x.mrr, x.recall_at_1, x.recall_at_10, x.median_rank
            );
        }
        s
    }
}

/// Fact tracing on a run directory (as the README main command writes it: `config.json`,
/// `tokenizer.json`, `store/`): every fact of [`fact_pool`] asked as [`fact_queries`], ranked
/// against every stored document by each of `methods` and by BM25 over the same documents;
/// queries are scored `chunk` at a time (memory: the full-space preconditioned query gradients
/// of a chunk).
pub fn trace_facts(
    run: &Path,
    methods: &[Method],
    chunk: usize,
    max_facts: Option<usize>,
    log: &dyn Fn(String),
) -> Result<FactReport> {
    let task = GptTask::from_run_dir(run)?;
    let store_dir = run.join("store");
    let store = Store::open(&store_dir).with_context(|| format!("{}", store_dir.display()))?;
    let corpus = task
        .corpus()
        .map_err(|e| anyhow!("the run's corpus: {e}"))?;
    let mut facts = fact_pool(&corpus);
    if let Some(m) = max_facts {
        // Spread evenly over the sorted pool, so both kinds stay represented.
        let n = facts.len();
        if m < n {
            facts = (0..m).map(|i| facts[i * n / m].clone()).collect();
        }
    }
    let asked = fact_queries(&facts);
    let queries: Vec<Query> = asked.iter().map(|(q, _, _)| q.clone()).collect();
    if queries.is_empty() {
        return Err(anyhow!(
            "{}: the corpus has no fact of the pool's forms",
            run.display()
        ));
    }
    let text: HashMap<u64, &str> = corpus.iter().map(|d| (d.id, d.text.as_str())).collect();
    log(format!(
        "{} facts, {} queries; scoring against {}",
        facts.len(),
        queries.len(),
        store_dir.display()
    ));
    let device = Device::default();
    let mut columns: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut seconds = Vec::new();
    let mut doc_ids: Option<Vec<u64>> = None;
    for m in methods {
        let t = Instant::now();
        let mut cols = Vec::with_capacity(queries.len());
        for part in queries.chunks(chunk.max(1)) {
            let a = analyze(&task, &store, part, &m.config, &device, &mut |_| {})
                .map_err(|e| anyhow!("{}: {e}", m.name))?;
            let ids: Vec<u64> = a.scores.docs.iter().map(|d| d.id).collect();
            match &doc_ids {
                None => doc_ids = Some(ids),
                Some(prev) if *prev != ids => {
                    return Err(anyhow!("the store's document order changed between passes"));
                }
                Some(_) => {}
            }
            cols.extend((0..part.len()).map(|q| a.scores.column(q)));
        }
        seconds.push(t.elapsed().as_secs_f64());
        log(format!("{}: {:.0} s", m.name, t.elapsed().as_secs_f64()));
        columns.push(cols);
    }
    let ids = match doc_ids {
        Some(ids) => ids,
        None => store_doc_ids(&store)?,
    };
    let texts: Vec<&str> = ids
        .iter()
        .map(|id| {
            text.get(id)
                .copied()
                .ok_or_else(|| anyhow!("document {id} of the store is not in the run's corpus"))
        })
        .collect::<Result<_>>()?;
    let t = Instant::now();
    let engine = bm25_engine(&texts);
    columns.push(
        queries
            .iter()
            .map(|q| {
                bm25_scores(
                    &engine,
                    texts.len(),
                    &format!("{}{}", q.prompt, q.completion),
                )
            })
            .collect(),
    );
    seconds.push(t.elapsed().as_secs_f64());
    let relevant: Vec<Vec<bool>> = facts
        .iter()
        .map(|f| texts.iter().map(|t| states(t, f)).collect())
        .collect();
    let unstated = relevant.iter().filter(|r| !r.contains(&true)).count();
    let mut names: Vec<String> = methods.iter().map(|m| m.name.clone()).collect();
    names.push("BM25 (text search, the reference row)".into());
    let mut ranks = Vec::with_capacity(queries.len());
    for (qi, (q, fi, _)) in asked.iter().enumerate() {
        let r = columns
            .iter()
            .map(|c| first_rank(&c[qi], &relevant[*fi]))
            .collect::<Result<Vec<_>>>()?;
        ranks.push((q.id.clone(), r));
    }
    let mut rows = Vec::new();
    let forms = [
        ("all", None),
        ("capital, question", Some(Form::Question)),
        ("capital, cloze", Some(Form::Cloze)),
        ("symbol → element", Some(Form::Symbol)),
    ];
    for (mi, name) in names.iter().enumerate() {
        for (label, form) in &forms {
            let rs: Vec<Option<usize>> = asked
                .iter()
                .zip(&ranks)
                .filter(|((_, fi, f), _)| {
                    form.as_ref().is_none_or(|want| want == f) && relevant[*fi].contains(&true)
                })
                .map(|(_, (_, r))| r[mi])
                .collect();
            if rs.is_empty() {
                continue;
            }
            rows.push(FactRow {
                method: name.clone(),
                form: (*label).into(),
                retrieval: retrieval(&rs),
            });
        }
    }
    Ok(FactReport {
        facts: facts.len(),
        queries: queries.len(),
        documents: ids.len(),
        unstated,
        rows,
        ranks,
        seconds,
    })
}

/// The store's document ids in order of first appearance (when no method was scored).
fn store_doc_ids(store: &Store) -> Result<Vec<u64>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let shards: Vec<_> = store.manifest().shards.iter().collect();
    influence_analyzer::scorer::for_each_shard(store, &shards, &[], 1, |_, chunks| {
        for c in chunks {
            for &id in &c.doc_ids {
                if seen.insert(id) {
                    out.push(id);
                }
            }
        }
        Ok(())
    })
    .map_err(|e| anyhow!("{}: {e}", store.dir().display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: u64, source: &str, text: &str) -> Document {
        Document {
            id,
            source: source.into(),
            text: text.into(),
        }
    }

    #[test]
    fn the_pool_reads_the_two_fact_forms_only() {
        let docs = [
            doc(
                0,
                "country-facts",
                "The capital of Bosnia and Herzegovina is Sarajevo.",
            ),
            doc(
                1,
                "country-facts",
                "Sarajevo is the capital city of Bosnia and Herzegovina.",
            ),
            doc(2, "elements", "The chemical symbol of Indium is In."),
            doc(3, "elements", "Indium has atomic number 49."),
            doc(4, "wordnet", "The capital of Mars is Olympus."),
            doc(
                5,
                "country-facts",
                "The capital of Bosnia and Herzegovina is Sarajevo.",
            ),
        ];
        let pool = fact_pool(&docs);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool[0].subject, "Bosnia and Herzegovina");
        assert_eq!(pool[0].answer, "Sarajevo");
        assert_eq!(
            (pool[1].subject.as_str(), pool[1].answer.as_str()),
            ("In", "Indium")
        );
        let q = fact_queries(&pool);
        assert_eq!(q.len(), 3);
        assert_eq!(
            q[0].0.prompt,
            "Q: What is the capital of Bosnia and Herzegovina?\nA:"
        );
        assert_eq!(q[1].0.completion, " Sarajevo.");
        assert_eq!(q[2].0.prompt, "In is the chemical symbol of");
        let ids: BTreeSet<_> = q.iter().map(|x| x.0.id.clone()).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn stating_needs_both_whole_phrases_case_sensitively() {
        let indium = Fact {
            kind: "symbol",
            subject: "In".into(),
            answer: "Indium".into(),
        };
        assert!(states("The chemical symbol of Indium is In.", &indium));
        assert!(!states("Indium is found in zinc ores.", &indium));
        // Co-occurrence is the definition: both whole phrases anywhere in the document.
        assert!(states("In 1863 Indium-like ores", &indium));
        assert!(!contains_phrase("Indiums", "Indium"));
        assert!(contains_phrase("(Indium)", "Indium"));
        assert!(!contains_phrase("anything", ""));
    }

    #[test]
    fn ranks_and_summaries() {
        let s = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(
            first_rank(&s, &[false, false, false, true, false]).ok(),
            Some(Some(2))
        );
        assert_eq!(
            first_rank(&s, &[true, false, true, false, false]).ok(),
            Some(Some(4))
        );
        assert_eq!(first_rank(&s, &[false; 5]).ok(), Some(None));
        assert!(first_rank(&s, &[false; 4]).is_err());
        assert!(first_rank(&[f64::NAN], &[true]).is_err());
        let r = retrieval(&[Some(1), Some(2), Some(20), None]);
        assert!((r.mrr - (1.0 + 0.5 + 0.05) / 4.0).abs() < 1e-12);
        assert_eq!(r.recall_at_1, 0.25);
        assert_eq!(r.recall_at_10, 0.5);
        assert_eq!(r.median_rank, 2.0);
    }

    #[test]
    fn bm25_finds_the_document_with_the_terms() {
        let texts = [
            "The capital of France is Paris.",
            "Paris is a city.",
            "Shall I compare thee to a summer's day?",
        ];
        let e = bm25_engine(&texts);
        let s = bm25_scores(&e, texts.len(), "The capital of France is Paris.");
        assert!(s[0] > s[1] && s[1] > s[2], "{s:?}");
        assert_eq!(s[2], 0.0);
    }
}
