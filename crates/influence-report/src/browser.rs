//! Headless Chromium: load a page, return its rendered DOM, optionally save a screenshot.
//!
//! Meant for tests and for looking at a report on a machine without a display. Each Chromium
//! process gets a fresh profile in a temporary folder, no network features (no sync, no
//! component updates, no QUIC) and is killed after [`TIMEOUT`].
//!
//! ```no_run
//! # fn main() -> Result<(), influence_report::ReportError> {
//! use std::path::Path;
//! if influence_report::browser::find_chromium().is_some() {
//!     let dom = influence_report::browser::render(
//!         Path::new("report/index.html"),
//!         Some(Path::new("report/screenshot.png")),
//!         (1280, 2400),
//!     )?;
//!     assert!(dom.contains("class=\"query\""));
//! }
//! # Ok(())
//! # }
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ReportError;

/// How long one Chromium run may take before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The names looked for, in `/usr/bin` and then on `PATH`.
const NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// Finds a Chromium binary: `$CHROMIUM` if it names an existing file (a path, or a name found
/// on `PATH`), else `/usr/bin/chromium`, `/usr/bin/chromium-browser`, `/usr/bin/google-chrome`,
/// else those names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let on_path = |name: &str| path_dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    if let Some(env) = std::env::var_os("CHROMIUM").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&env);
        if p.is_file() {
            return Some(p);
        }
        if p.components().count() == 1
            && let Some(found) = on_path(&env.to_string_lossy())
        {
            return Some(found);
        }
    }
    NAMES
        .iter()
        .map(|n| Path::new("/usr/bin").join(n))
        .find(|p| p.is_file())
        .or_else(|| NAMES.iter().find_map(|n| on_path(n)))
}

/// Loads `page` (a local HTML file) in headless Chromium and returns the DOM after load
/// (`--dump-dom`). With `screenshot`, a second run saves a PNG of the page's first `size`
/// (width, height) pixels there.
///
/// # Errors
///
/// [`ReportError::BrowserNotFound`] without a Chromium ([`find_chromium`]);
/// [`ReportError::Io`] when `page` does not exist or Chromium cannot be started;
/// [`ReportError::BrowserFailed`] for a non-zero exit (with the end of its stderr) or a
/// screenshot that was not written; [`ReportError::BrowserTimeout`] after [`TIMEOUT`].
pub fn render(
    page: &Path,
    screenshot: Option<&Path>,
    size: (u32, u32),
) -> Result<String, ReportError> {
    let binary = find_chromium().ok_or(ReportError::BrowserNotFound)?;
    let page = page.canonicalize().map_err(ReportError::io(page))?;
    let url = file_url(&page);

    let dom = run(&binary, &["--dump-dom".to_string(), url.clone()])?;
    if let Some(shot) = screenshot {
        // Chromium resolves a relative screenshot path against its own working directory.
        let shot = if shot.is_absolute() {
            shot.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(ReportError::io("."))?
                .join(shot)
        };
        if let Some(parent) = shot.parent() {
            std::fs::create_dir_all(parent).map_err(ReportError::io(parent))?;
        }
        // A stale file must not pass for a fresh screenshot.
        match std::fs::remove_file(&shot) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ReportError::io(&shot)(e));
            }
            _ => {}
        }
        run(
            &binary,
            &[
                format!("--screenshot={}", shot.display()),
                format!("--window-size={},{}", size.0, size.1),
                "--hide-scrollbars".to_string(),
                url,
            ],
        )?;
        if !shot.is_file() {
            return Err(ReportError::BrowserFailed {
                binary,
                status: "success".into(),
                stderr: format!("no screenshot was written to {}", shot.display()),
            });
        }
    }
    Ok(String::from_utf8_lossy(&dom).into_owned())
}

/// `file://` and the absolute path, every byte outside `A-Za-z0-9/-._~` percent-encoded.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &b in path.to_string_lossy().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// Runs Chromium with the common flags and `args`; returns its stdout.
fn run(binary: &Path, args: &[String]) -> Result<Vec<u8>, ReportError> {
    let profile = tempfile::Builder::new()
        .prefix("influence-report-chromium-")
        .tempdir()
        .map_err(ReportError::io(std::env::temp_dir()))?;
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ReportError::io(binary))?;
    // Readers on threads, so a full pipe never blocks Chromium; shared buffers, so what was read
    // is there even when a helper process keeps a pipe open after Chromium is killed.
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|p| drain(p, stdout.clone())),
        child.stderr.take().map(|p| drain(p, stderr.clone())),
    ];
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(ReportError::io(binary))? {
            Some(status) => break Some(status),
            None if start.elapsed() > TIMEOUT => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let Some(status) = status else {
        // Ignore a failure to kill: the process may have exited just now.
        let _ = child.kill();
        let _ = child.wait();
        return Err(ReportError::BrowserTimeout {
            binary: binary.to_path_buf(),
            seconds: TIMEOUT.as_secs(),
            stderr: tail(&take(&stderr)),
        });
    };
    // Chromium has exited; its helpers close the pipes within moments.
    for reader in readers.into_iter().flatten() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
    if !status.success() {
        return Err(ReportError::BrowserFailed {
            binary: binary.to_path_buf(),
            status: status.to_string(),
            stderr: tail(&take(&stderr)),
        });
    }
    Ok(take(&stdout))
}

fn drain(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            match into.lock() {
                Ok(mut v) => v.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    })
}

fn take(buf: &Mutex<Vec<u8>>) -> Vec<u8> {
    buf.lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

/// The last 20 lines (at most 4000 bytes) of `stderr`.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(20)..].join("\n");
    if out.len() > 4000 {
        let mut cut = out.len() - 4000;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
    }
    if out.is_empty() {
        "(empty)".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_encoded() {
        assert_eq!(
            file_url(Path::new("/tmp/a b/#1/ü.html")),
            "file:///tmp/a%20b/%231/%C3%BC.html"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let t = tail(text.as_bytes());
        assert!(t.starts_with("line 10") && t.ends_with("line 29"), "{t}");
        assert_eq!(tail(b""), "(empty)");
    }
}
