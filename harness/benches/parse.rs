//! Throughput of the structured parsers on real output: the real Claude Code
//! session fixture (and the Codex `exec --json` sample) repeated to about
//! 50 MB in memory, fed line by line. Run with
//! `cargo bench -p corral-harness --bench parse`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use corral_harness::event::parser_for;

/// The package folder, read when the test runs (cargo sets it): a test
/// binary reused from a cargo target folder shared with another checkout
/// would otherwise read that checkout's files, or none.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

const TARGET_BYTES: usize = 50 * 1024 * 1024;

/// The fixture repeated until it reaches `TARGET_BYTES`.
fn transcript(name: &str) -> Vec<u8> {
    let one = std::fs::read(manifest_dir().join("tests/fixtures/agent-output").join(name))
        .unwrap_or_else(|e| panic!("read fixture {name}: {e}"));
    let mut all = Vec::with_capacity(TARGET_BYTES + one.len());
    while all.len() < TARGET_BYTES {
        all.extend_from_slice(&one);
        if !all.ends_with(b"\n") {
            all.push(b'\n');
        }
    }
    all
}

fn bench(label: &str, harness: &str, fixture: &str) {
    let data = transcript(fixture);
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let mut parser = parser_for(harness).expect("known harness");
    let start = Instant::now();
    let mut events = 0usize;
    for line in &lines {
        events += black_box(parser.feed_line(black_box(line))).len();
    }
    let seconds = start.elapsed().as_secs_f64();
    let megabytes = data.len() as f64 / (1024.0 * 1024.0);
    println!(
        "{label} parser: {megabytes:.1} MB in {seconds:.3} s = {:.1} MB/s ({} lines, {events} events, {} tokens total)",
        megabytes / seconds,
        lines.len(),
        parser.totals().tokens.total()
    );
}

fn main() {
    bench("claude", "claude", "claude-stream-json-3-real-session-ccagent.ndjson");
    bench("codex", "codex", "codex-exec-json-1.jsonl");
}
