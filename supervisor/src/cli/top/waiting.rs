//! What `corral wait` shows while it waits, on a terminal: a live line
//! per agent it still waits for (its state, runtime, spend against its
//! budget, its last event), fed by the same event stream as `corral top`,
//! on standard error. Each line goes when its agent is done; all of them
//! go before `wait` prints its answer. Off a terminal it shows nothing.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::commands::{human_count, human_secs};
use crate::cli::human;
use crate::cli::top::board::Board;
use crate::cli::top::feed;
use crate::model::lifecycle::AgentRecord;
use crate::sys::paths::StateDir;

/// The live lines; [`Waiting::finish`] takes them away.
pub struct Waiting {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Starts the lines for `addresses` (absolute) when standard error is a
/// terminal; `None` otherwise.
pub fn show(state: &StateDir, addresses: &[String]) -> Option<Waiting> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (state, addresses, flag) = (state.clone(), addresses.to_vec(), Arc::clone(&stop));
    let thread = std::thread::spawn(move || lines(&state, &addresses, &flag));
    Some(Waiting { stop, thread })
}

impl Waiting {
    /// Clears the lines (before `wait` prints its answer).
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn lines(state: &StateDir, addresses: &[String], stop: &AtomicBool) {
    let feed = feed::start(state.clone());
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {wide_msg}").expect("a valid template");
    let bars: Vec<(String, ProgressBar)> = addresses
        .iter()
        .map(|address| {
            let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
            bar.set_message(format!("waiting for {address}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            (address.clone(), bar)
        })
        .collect();
    let mut board = Board::default();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(message) = feed.recv_timeout(Duration::from_millis(100)) {
            board.take(message);
            while let Ok(message) = feed.try_recv() {
                board.take(message);
            }
        }
        for (address, bar) in &bars {
            if bar.is_finished() {
                continue;
            }
            let Some(agent) = board.agents().into_iter().find(|a| a.address.to_string() == *address) else { continue };
            if agent.is_done() {
                bar.finish_and_clear();
                continue;
            }
            bar.set_message(line(&board, agent));
        }
    }
    for (_, bar) in &bars {
        bar.finish_and_clear();
    }
    let _ = multi.clear();
}

/// `waiting for /root/api: running 12.5s · tokens 1.2k/5.0k · $0.0100 · → Bash: ls`
fn line(board: &Board, agent: &AgentRecord) -> String {
    let mut parts = vec![match &agent.merge_state {
        Some(merge) => format!("merge {}", merge.as_str()),
        None => agent.state.as_str().to_string(),
    }];
    if let Some(runtime) = agent.runtime_secs(Utc::now()) {
        parts[0].push_str(&format!(" {}", human_secs(runtime)));
    }
    let spend = board.subtree_spend(&agent.address);
    match agent.budget.tokens {
        Some(limit) => parts.push(format!("tokens {}/{}", human_count(spend.tokens), human_count(limit))),
        None if spend.tokens > 0 => parts.push(format!("tokens {}", human_count(spend.tokens))),
        None => {}
    }
    match agent.budget.cost {
        Some(limit) => parts.push(format!("cost {}/{}", human::usd(spend.cost), human::usd(limit))),
        None if spend.cost > 0.0 => parts.push(format!("cost {}", human::usd(spend.cost))),
        None => {}
    }
    if let Some((_, text)) = board.last_event(&agent.address) {
        parts.push(human::truncate(text, 60));
    }
    format!("waiting for {}: {}", agent.address, parts.join(" · "))
}
