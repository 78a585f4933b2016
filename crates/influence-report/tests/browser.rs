//! The page in a real browser: headless Chromium renders it, the figures, queries and
//! documents are in the DOM, no injected element survives, and a screenshot is taken.
//!
//! CI installs Chromium (`.ci/run`) and sets `CI`; there a missing Chromium fails the test.
//! Elsewhere the test is skipped with a note.

mod common;

use common::{KINDS, SLUGS};
use influence_report::browser::{find_chromium, render};
use influence_report::write_report;

/// The text of a DOM text node as Chromium serialises it.
fn dom_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

#[test]
fn page_renders_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium to render the report: install Debian's chromium or set CHROMIUM"
        );
        eprintln!("note: no Chromium found (set CHROMIUM or install chromium); page not rendered");
        return;
    };
    eprintln!("rendering with {}", chromium.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("report with space");
    let data = common::report();
    let files = write_report(&data, &root).expect("write_report");
    let shot = root.join("screenshot.png");
    let dom = render(&files.index, Some(&shot), (1280, 2400)).expect("render");

    assert!(
        dom.contains("<h1 id=\"title\">"),
        "the page was parsed: {}",
        &dom[..dom.len().min(500)]
    );
    // Markup from the data stays text: no element was injected.
    assert!(!dom.contains("<script"), "a script element in the DOM");
    assert!(
        !dom.contains("<img src=\"x\""),
        "an injected image in the DOM"
    );
    assert!(
        !dom.contains("<b>") && !dom.contains("<i>"),
        "injected markup in the DOM"
    );

    for slug in SLUGS {
        for kind in KINDS {
            let id = format!("id=\"fig-{kind}-{slug}\"");
            assert!(dom.contains(&id), "figure {id}");
        }
    }
    // Every image in the rendered page is a relative path to a file of the report.
    let srcs: Vec<&str> = dom
        .split("<img ")
        .skip(1)
        .map(|s| {
            let s = &s[s.find("src=\"").expect("src") + 5..];
            &s[..s.find('"').expect("end of src")]
        })
        .collect();
    assert_eq!(srcs.len(), SLUGS.len() * KINDS.len());
    for src in srcs {
        assert!(
            !src.starts_with('/') && !src.contains(':'),
            "{src} is relative"
        );
        assert!(root.join(src).is_file(), "{src} exists");
    }

    for (r, run) in data.runs.iter().enumerate() {
        for (q, query) in run.queries.iter().enumerate() {
            assert!(
                dom.contains(&format!("class=\"query\" id=\"q-{}-", SLUGS[r])),
                "query sections of run {r}"
            );
            assert!(dom.contains(&dom_text(&query.id)), "query {}", query.id);
            for d in &query.top {
                // The plain text of every top document, line by line, as the browser has it.
                for line in d.text.lines().filter(|l| !l.trim().is_empty()) {
                    assert!(
                        dom.contains(&dom_text(line)),
                        "run {r} query {q} doc {}: {line:?} not in the DOM",
                        d.rank
                    );
                }
            }
        }
    }
    assert_eq!(
        dom.matches("<section class=\"query\"").count(),
        data.runs.iter().map(|r| r.queries.len()).sum::<usize>()
    );
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 10_000, "screenshot of only {} bytes", png.len());
}

#[test]
fn a_missing_page_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("nowhere.html");
    match render(&page, None, (800, 600)) {
        Err(influence_report::ReportError::BrowserNotFound) => {
            assert!(find_chromium().is_none());
        }
        Err(influence_report::ReportError::Io { path, .. }) => assert_eq!(path, page),
        other => panic!("expected an error naming {}, got {other:?}", page.display()),
    }
}
