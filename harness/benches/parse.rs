//! Throughput of the structured parsers on real output: the real Claude Code
//! session fixture, the Codex `exec --json` sample, and the output.log of
//! real Gemini CLI 0.61, opencode 1.18 and Aider 0.86 agents run by corral,
//! each repeated to about 50 MB in memory, fed line by line. Beside each, the
//! anchor: the same lines only decoded (`serde_json::Value` for JSON lines,
//! lossy UTF-8 for Aider's text), which no parser can beat; and the load
//! average at the start and the end. Run with
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

/// The machine's load average, as /proc/loadavg has it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// MB/s of only decoding each line: JSON, or lossy UTF-8 for text.
fn anchor(lines: &[&[u8]], megabytes: f64, json: bool) -> f64 {
    let start = Instant::now();
    for line in lines {
        if json {
            let _ = black_box(serde_json::from_slice::<serde_json::Value>(black_box(line)));
        } else {
            black_box(String::from_utf8_lossy(black_box(line)));
        }
    }
    megabytes / start.elapsed().as_secs_f64()
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
    let anchor = anchor(&lines, megabytes, harness != "aider");
    println!(
        "{label} parser: {megabytes:.1} MB in {seconds:.3} s = {:.1} MB/s ({} lines, {events} events, {} tokens total); \
         anchor, decoding the lines only: {anchor:.1} MB/s",
        megabytes / seconds,
        lines.len(),
        parser.totals().tokens.total()
    );
}

fn main() {
    println!("load average at start: {}", load_average());
    bench("claude", "claude", "claude-stream-json-3-real-session-ccagent.ndjson");
    bench("codex", "codex", "codex-exec-json-1.jsonl");
    bench("gemini", "gemini", "gemini-0.61.0-corral-write-file.jsonl");
    bench("opencode", "opencode", "opencode-1.18.33-corral-write.jsonl");
    bench("aider", "aider", "aider-0.86.2-corral-edit-and-two-messages.txt");
    println!("load average at end: {}", load_average());
}
