//! The client side of a run: following its driver until it ends, showing
//! progress, stopping the run on SIGINT or SIGTERM, and printing the
//! report.
//!
//! Progress goes to stderr (stdout is the report's, and with `--json` only
//! the JSON's): on a terminal, a live line per agent (indicatif); else
//! (cron, CI) a plain line each time an agent's state, exit or merge
//! changes, with no escape codes. Nothing here reads stdin.
//!
//! Nothing here panics on a reader that went away: `corral run ... | head
//! -1`, or a closed stderr, loses what could not be written, while the
//! run goes on and the exit code still says how it went ([`out`], [`err`]).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::ask;
use super::record::{RunRecord, RunState, Runs};
use super::report::{self, Report};
use crate::model::address::Address;
use crate::model::error::{Error, Result};
use crate::model::lifecycle::AgentRecord;
use crate::sys::paths::StateDir;
use crate::wire::protocol::Request;

/// How often the client looks at the run.
const POLL: Duration = Duration::from_millis(200);

/// SIGINT, SIGTERM and SIGHUP, as a flag the client polls.
#[derive(Clone)]
pub struct Signals {
    flag: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
            signal_hook::flag::register(signal, flag.clone()).map_err(|e| Error::other(format!("signals: {e}")))?;
        }
        Ok(Signals { flag })
    }

    pub fn stop_requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// Follows run `id` until its driver is done; prints the report; returns
/// the run's exit code. A signal stops the run (`corral stop` of the
/// driver's subtree, each agent with its grace) and still prints the report.
pub fn follow(state: &StateDir, runs: &Runs, id: &str, json: bool, signals: &Signals) -> Result<i32> {
    let record = runs.load(id)?;
    let driver = Address::parse(&record.address)?;
    let mut progress = Progress::new(&record);
    let (wake_tx, wake) = mpsc::channel();
    {
        let (state, address, wake_tx) = (state.clone(), record.address.clone(), wake_tx.clone());
        std::thread::spawn(move || {
            let _ = ask(&state, &Request::Wait { addresses: vec![address], timeout_secs: None });
            let _ = wake_tx.send(()); // The driver is done.
        });
    }
    let mut stopping = false;
    loop {
        if signals.stop_requested() && !stopping {
            stopping = true;
            progress.note("stopping the run: each agent gets its grace; worktrees are kept");
            let (state, address, wake_tx) = (state.clone(), record.address.clone(), wake_tx.clone());
            std::thread::spawn(move || {
                let _ = ask(&state, &Request::Stop { address, grace_secs: None });
                let _ = wake_tx.send(()); // The run's agents have stopped.
            });
        }
        let agents = live_agents(state, &driver)?;
        let record = runs.load(id)?;
        progress.show(&report::build(&record, &agents, Utc::now()));
        if agents.iter().any(|a| a.address == driver && a.is_done()) {
            break;
        }
        let _ = wake.recv_timeout(POLL);
    }
    let record = runs.load(id)?;
    let agents = super::drive::run_agents(state, &driver)?;
    let report = report::build(&record, &agents, Utc::now());
    progress.finish(&report);
    print_report(&report, json);
    if report.state == RunState::Interrupted {
        err(&format!(
            "corral run: the driver of {id} ended before the run did; `corral run --resume {id}` finishes it"
        ));
    }
    Ok(report.code)
}

/// The run's agents that gc has not removed (the cheaper list, for polling).
fn live_agents(state: &StateDir, driver: &Address) -> Result<Vec<AgentRecord>> {
    let (agents, _) =
        crate::cli::client::list_with(|request| ask(state, request), false, false, Some(driver.to_string()))?;
    Ok(agents)
}

pub fn print_report(report: &Report, json: bool) {
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(report).expect("a report serializes")));
    } else {
        out(&report::render(report));
    }
}

/// Writes `text` on stdout, as `print!` does but without its panic: a
/// reader that went away (`| head -1`, EPIPE) takes nothing more, and any
/// other failure is said on stderr.
pub(crate) fn out(text: &str) {
    crate::cli::out::write_outcome(format_args!("{text}"));
}

/// Writes `line` and a newline on stderr, as `eprintln!` does but without
/// its panic when stderr is gone.
pub(crate) fn err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// What the client shows while the run goes.
struct Progress {
    terminal: Option<Bars>,
    /// Plain mode: the last line printed for each agent (without runtime).
    said: HashMap<String, String>,
}

struct Bars {
    multi: MultiProgress,
    bars: Vec<(String, ProgressBar)>,
}

impl Progress {
    fn new(record: &RunRecord) -> Progress {
        err(&format!(
            "corral run: {} ({} agents; `corral ps`, `corral logs {}`)",
            record.run,
            record.plan.agents.len(),
            record.address
        ));
        let terminal = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let width = record.plan.agents.iter().map(|a| a.name.chars().count()).max().unwrap_or(0);
            let bars = record
                .plan
                .agents
                .iter()
                .map(|agent| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(running_style());
                    bar.set_prefix(format!("{:<width$}", agent.name));
                    bar.set_message("waiting");
                    bar.enable_steady_tick(Duration::from_millis(120));
                    (agent.name.clone(), bar)
                })
                .collect();
            Bars { multi, bars }
        });
        Progress { terminal, said: HashMap::new() }
    }

    fn note(&mut self, text: &str) {
        match &self.terminal {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => err(&format!("corral run: {text}")),
        }
    }

    fn show(&mut self, report: &Report) {
        for row in &report.agents {
            let line = report::row_line(row);
            match &self.terminal {
                Some(bars) => {
                    let Some((_, bar)) = bars.bars.iter().find(|(name, _)| *name == row.name) else { continue };
                    if bar.is_finished() {
                        continue;
                    }
                    bar.set_message(line);
                    if is_final_row(row) {
                        bar.set_style(ended_style());
                        bar.finish();
                    }
                }
                None => {
                    let key = format!("{} {:?} {:?} {:?}", row.state, row.exit, row.merge, row.reason);
                    if self.said.get(&row.name) != Some(&key) {
                        if row.state != "waiting" || self.said.contains_key(&row.name) {
                            let time = chrono::Local::now().format("%H:%M:%S");
                            err(&format!("{time} {}: {line}", row.name));
                        }
                        self.said.insert(row.name.clone(), key);
                    }
                }
            }
        }
    }

    fn finish(&mut self, report: &Report) {
        self.show(report);
        if let Some(bars) = &self.terminal {
            for (name, bar) in &bars.bars {
                if !bar.is_finished() {
                    let line = report.agents.iter().find(|r| &r.name == name).map(report::row_line);
                    bar.set_style(ended_style());
                    bar.finish_with_message(line.unwrap_or_default());
                }
            }
        }
    }
}

/// Nothing more will change for this row, short of a `corral merge`.
fn is_final_row(row: &report::Row) -> bool {
    let ended = !matches!(row.state.as_str(), "waiting" | "pending" | "starting" | "running");
    ended && !matches!(row.merge.as_deref(), Some("queued" | "merging" | "auto"))
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix}  {msg}").expect("a good template")
}

fn ended_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix}  {msg}").expect("a good template")
}
