//! Smoke test for `scripts/bench`: `--quick --peers paude-proxy` must complete and produce a
//! report with real figures for paude-proxy, in the nginx + hey configuration (issue 14, the
//! default) and in the native one (issue 7, `--harness native`). Benchmarks never decide the
//! suite's pass/fail, so this runs only when PAUDE_BENCH_SMOKE=1; otherwise it prints a skip
//! line.
//!
//! It measures this test build's `paude-proxy` (PAUDE_PROXY_BIN) rather than a release
//! build: cargo keeps the target dir locked while tests run, and the point here is that
//! the script works end to end, not the numbers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whole budget: building the bench tools (cold cache on 2 cores) plus the quick run.
const SMOKE_BUDGET: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(200);
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn bench_quick_nginx_hey_completes() {
    smoke("nginx-hey", "| Keep-alive req/s, HTTP/1.1, 32 conns");
}

#[test]
fn bench_quick_native_completes() {
    smoke("native", "| Keep-alive req/s, HTTP/1.1, 64 conns");
}

fn smoke(harness: &str, keep_alive_row: &str) {
    if std::env::var("PAUDE_BENCH_SMOKE").as_deref() != Ok("1") {
        println!(
            "SKIP bench_smoke ({harness}): set PAUDE_BENCH_SMOKE=1 to run scripts/bench --quick --peers paude-proxy"
        );
        return;
    }
    // Both configurations share bench/out: one at a time.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let report = out.path().join("results.md");
    let mut child = Command::new(root.join("scripts/bench"))
        .args([
            "--quick",
            "--peers",
            "paude-proxy",
            "--harness",
            harness,
            "--output",
        ])
        .arg(&report)
        .env("PAUDE_PROXY_BIN", env!("CARGO_BIN_EXE_paude-proxy"))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start scripts/bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + SMOKE_BUDGET;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for scripts/bench") {
            break status;
        }
        if Instant::now() >= deadline {
            // SIGTERM first: the script stops everything it started on a signal.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            panic!("scripts/bench --quick did not finish within {SMOKE_BUDGET:?}");
        }
        std::thread::sleep(POLL);
    };
    let printed = reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "scripts/bench failed ({status}); stdout:\n{printed}"
    );

    let text = std::fs::read_to_string(&report).expect("the report file was written");
    assert_eq!(
        text.trim(),
        printed.trim(),
        "stdout and the report file differ"
    );
    assert!(
        !text.contains("not measured"),
        "a peer was not measured:\n{text}"
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("| Measurement"))
        .expect("a results table");
    let columns: Vec<&str> = header.split('|').map(str::trim).collect();
    let paude = columns
        .iter()
        .position(|c| *c == "paude-proxy")
        .expect("a paude-proxy column");
    let row = text
        .lines()
        .find(|l| l.starts_with(keep_alive_row))
        .expect("the keep-alive row");
    let cell = row
        .split('|')
        .map(str::trim)
        .nth(paude)
        .expect("paude-proxy cell");
    let rate: f64 = cell
        .split_whitespace()
        .next()
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no number in the paude-proxy keep-alive cell: {cell:?}"));
    assert!(rate > 0.0, "paude-proxy served no request: {row}");
    assert!(cell.contains("of direct"), "no ratio to direct: {cell}");
}
