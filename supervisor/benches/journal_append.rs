//! Journal appends (issue 16's figure: at least 100,000 events/s batched):
//! `Journal::append` of `output` events (a 100-byte line each, the most
//! common event), in batches of 1, 10, 100 and 1,000 events. Each append
//! is one write and one fdatasync, as the daemon's group commit does for
//! what arrives together; the anchor is the disk itself: one 300-byte
//! write and fdatasync.
//!
//! Run: `cargo bench -p corral --bench journal_append`.
//! `JOURNAL_BENCH_EVENTS` sets the events per batch size (100,000; the
//! batch of 1 writes at most 2,000).

mod common;
use common::{env_number, load_average};

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use corral::daemon::journal::{Draft, Journal};
use corral::model::address::Address;
use corral::model::event::EventBody;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("journal_append bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let events: usize = env_number("JOURNAL_BENCH_EVENTS", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let load_start = load_average();
    let agent = Address::parse("/root/bench").unwrap();
    let line = "x".repeat(100);

    // The disk: one small write and fdatasync.
    let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut syncs = Vec::new();
    for i in 0..200u64 {
        let started = Instant::now();
        probe.write_all_at(&[b'p'; 300], i * 300).unwrap();
        probe.sync_data().unwrap();
        syncs.push(started.elapsed().as_secs_f64());
    }
    syncs.sort_by(f64::total_cmp);
    let sync_median = syncs[syncs.len() / 2];

    println!("journal_append: output events of 100 bytes (load at start {load_start})");
    println!("  the disk: a 300-byte write + fdatasync, median {:.2} ms", sync_median * 1e3);
    for batch in [1usize, 10, 100, 1000] {
        let path = dir.path().join(format!("events-{batch}.jsonl"));
        let (mut journal, _) = Journal::open(&path).unwrap();
        let total = if batch == 1 { events.min(2000) } else { events };
        let mut offset = 0u64;
        let started = Instant::now();
        for _ in 0..total / batch {
            let drafts = (0..batch)
                .map(|_| {
                    offset += 101;
                    Draft {
                        agent: Some(agent.clone()),
                        parent: Some(Address::root()),
                        task: Some("t-1".into()),
                        body: EventBody::Output { text: line.clone(), offset, skipped: 0 },
                    }
                })
                .collect();
            journal.append(drafts).unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let written = (total / batch) * batch;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "  batches of {batch:>4}: {written:>7} events in {secs:6.2} s = {:>9.0} events/s, {:.1} MB/s, {:.2} ms an append{}",
            written as f64 / secs,
            size as f64 / 1e6 / secs,
            secs * 1e3 / (total / batch) as f64,
            if batch == 1000 { "   (goal: at least 100,000 events/s)" } else { "" }
        );
    }
    println!("  load average at end {}", load_average());
    let _ = std::io::stdout().flush();
}
