//! `corral top`: a live terminal view of the agent tree, with keys to
//! attach, read the log and the diff, stop and merge (k9s for agents).
//!
//! | module | owns |
//! |---|---|
//! | [`feed`] | the thread that reads the event stream (and the agent list once) |
//! | [`board`] | what the events say: the agents, their recent output, their last event |
//! | [`ui`] | the keys, the selection, the filter, the open view |
//! | [`render`] | drawing it all with ratatui |
//! | [`waiting`] | what `corral wait` shows on a terminal, from the same feed |
//!
//! This module owns the terminal while `top` runs: raw mode and the
//! alternate screen from the start, given back as it was found on `q`, on
//! SIGTERM/SIGHUP/SIGINT, on an error and on a panic, and handed to
//! `corral attach` (and taken back) for Enter. A terminal that hangs up
//! (SSH gone) ends `top` at once. Requests that can take a
//! while (stop waits out the grace, merge runs the gate) run on threads of
//! their own, so the view stays live.

pub mod board;
pub mod feed;
pub mod render;
pub mod ui;
pub mod waiting;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self as term_event, Event as TermEvent, KeyEventKind};
use ratatui::crossterm::terminal::{enable_raw_mode, EnterAlternateScreen};
use ratatui::crossterm::{cursor, execute};
use ratatui::DefaultTerminal;

use crate::cli::client::Client;
use crate::cli::human::{self, Tone};
use crate::model::address::Address;
use crate::model::error::{Error, Result};
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response};
use board::Board;
use render::Theme;
use ui::{Action, Mode, Pager, Ui};

/// The longest log `l` reads (its end): enough for hours of an agent.
const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Runs `corral top` until `q`; returns the exit code.
pub fn run(state: &StateDir) -> Result<i32> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Error::other(
            "corral top needs a terminal; for scripts, `corral ps --json` and `corral events` say the same",
        ));
    }
    // Connect before taking the terminal, so a daemon that cannot start
    // says why on a normal screen.
    Client::connect(state)?;
    let feed = feed::start(state.clone());
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let theme = Theme { color: human::color_allowed(true) };
    let repo = state
        .repo_root
        .file_name()
        .map_or_else(|| state.repo_root.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut screen = Screen::enter().map_err(|e| Error::other(format!("cannot set up the terminal: {e}")))?;
    // crossterm reads a hung-up terminal in a loop that never ends (an end
    // of file is no event to it): a watchdog ends `top` instead.
    std::thread::Builder::new()
        .name("corral-top-hangup".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(250));
            if hung_up() {
                // Nobody sees the screen any more; nothing to give back.
                std::process::exit(0);
            }
        })
        .map_err(|e| Error::other(format!("cannot start a thread: {e}")))?;
    let (done_tx, done_rx) = channel::<Done>();
    let mut board = Board::default();
    let mut ui = Ui::default();
    let mut drawn: Option<Instant> = None;
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) && !hung_up() {
        while let Ok(message) = feed.try_recv() {
            board.take(message);
            dirty = true;
        }
        while let Ok(done) = done_rx.try_recv() {
            done.show(&mut ui);
            dirty = true;
        }
        let rows: Vec<Address> = render::visible(&board, &ui).iter().map(|a| a.address.clone()).collect();
        ui.settle(&rows);
        // Runtimes and "4s ago" move on by themselves: once a second.
        if dirty || drawn.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            screen
                .terminal
                .draw(|frame| render::draw(frame, &board, &mut ui, theme, &repo))
                .map_err(|e| Error::other(format!("cannot draw: {e}")))?;
            drawn = Some(Instant::now());
            dirty = false;
        }
        if !term_event::poll(Duration::from_millis(100)).map_err(|e| Error::other(e.to_string()))? {
            continue;
        }
        dirty = true;
        let key = match term_event::read().map_err(|e| Error::other(e.to_string()))? {
            TermEvent::Key(key) if key.kind != KeyEventKind::Release => key,
            // A resize is drawn at the new size on the next round.
            _ => continue,
        };
        let ended = |address: &Address| board.agent(address).is_some_and(|a| a.state.is_terminal());
        match ui.key(key, &rows, ended) {
            Action::None => {}
            Action::Quit => break,
            Action::Attach(address) => {
                screen.suspend();
                let result = crate::cli::commands::attach(state, &address.to_string());
                screen.resume().map_err(|e| Error::other(format!("cannot take the terminal back: {e}")))?;
                match result {
                    Ok(_) => ui.say(format!("back from {address}"), Tone::Plain),
                    Err(err) => ui.say(err.message, Tone::Bad),
                }
            }
            Action::Log(address) => {
                ui.say(format!("reading the output of {address}…"), Tone::Plain);
                work(state, &done_tx, move |client| read_log(client, &address));
            }
            Action::Diff(address) => {
                ui.say(format!("reading the diff of {address}…"), Tone::Plain);
                work(state, &done_tx, move |client| diff(client, &address));
            }
            Action::Stop(address) => work(state, &done_tx, move |client| stop_agent(client, &address)),
            Action::Merge(address) => {
                ui.say(format!("merging {address} through the queue…"), Tone::Plain);
                work(state, &done_tx, move |client| merge(client, &address));
            }
        }
    }
    drop(screen);
    Ok(0)
}

/// True once the terminal has hung up (an SSH connection dropped, the
/// terminal window closed, a tmux server killed): poll(2) says POLLHUP on
/// it. SIGHUP does not always come (the pane's shell may take it).
fn hung_up() -> bool {
    let mut terminal = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout.
    let ready = unsafe { libc::poll(&mut terminal, 1, 0) };
    ready > 0 && terminal.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// The terminal while `top` has it. Dropping it gives the terminal back
/// as it was (cooked mode, the main screen, the cursor shown); ratatui's
/// panic hook does the same on a panic.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        let terminal = ratatui::try_init()?;
        Ok(Screen { terminal })
    }

    /// Gives the terminal back for a while (`corral attach`).
    fn suspend(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }

    fn resume(&mut self) -> std::io::Result<()> {
        enable_raw_mode()?;
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        // What attach printed is not what is on screen: draw it all anew.
        self.terminal.clear()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// What a worker thread hands back.
enum Done {
    Say(String, Tone),
    /// A text to page through; `at_end` opens it at its end (a log).
    Page {
        pager: Pager,
        at_end: bool,
    },
}

impl Done {
    fn show(self, ui: &mut Ui) {
        match self {
            Done::Say(text, tone) => ui.say(text, tone),
            Done::Page { mut pager, at_end } => {
                if at_end {
                    pager.top = pager.lines.len().saturating_sub(ui.page.max(1));
                }
                ui.message = None;
                ui.mode = Mode::Pager(pager);
            }
        }
    }
}

/// Runs `job` with a connection of its own on a thread; its answer (or
/// its error) comes back as a [`Done`].
fn work(state: &StateDir, done: &Sender<Done>, job: impl FnOnce(&mut Client) -> Result<Done> + Send + 'static) {
    let (state, done) = (state.clone(), done.clone());
    std::thread::spawn(move || {
        let answer = Client::connect_existing(&state).and_then(|mut client| job(&mut client));
        let _ = done.send(answer.unwrap_or_else(|err| Done::Say(err.message, Tone::Bad)));
    });
}

fn unexpected() -> Error {
    Error::other("the daemon gave an unexpected answer")
}

fn read_log(client: &mut Client, address: &Address) -> Result<Done> {
    let Response::Info { agent, log, .. } = client.request(&Request::Info { address: address.to_string() })? else {
        return Err(unexpected());
    };
    let bytes = read_tail(&log, LOG_MAX_BYTES).map_err(|e| Error::io("cannot read", &log, e))?;
    let lines = human::readable_log(agent.harness, &bytes);
    let how = match agent.harness.parser() {
        Some(_) => format!("its {} output as text", agent.harness),
        None => "its output".to_string(),
    };
    let pager = Pager { title: format!("{address} · {how} · {}", log.display()), lines, top: 0, diff: false };
    Ok(Done::Page { pager, at_end: true })
}

/// The last `max` bytes of a file, from a line start.
pub(crate) fn read_tail(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if start > 0 {
        let cut = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.drain(..cut);
    }
    Ok(bytes)
}

fn diff(client: &mut Client, address: &Address) -> Result<Done> {
    let Response::Diff { patch } = client.request(&Request::Diff { address: address.to_string() })? else {
        return Err(unexpected());
    };
    let lines: Vec<String> = patch.lines().map(str::to_string).collect();
    let title = match lines.is_empty() {
        true => format!("{address} · no changes against where it started"),
        false => format!("{address} · what it changed"),
    };
    Ok(Done::Page { pager: Pager { title, lines, top: 0, diff: true }, at_end: false })
}

fn stop_agent(client: &mut Client, address: &Address) -> Result<Done> {
    let request = Request::Stop { address: address.to_string(), grace_secs: None };
    let Response::Stopped { agents } = client.request(&request)? else {
        return Err(unexpected());
    };
    let states: Vec<String> = agents.iter().map(|a| format!("{} {}", a.address, a.state.as_str())).collect();
    Ok(Done::Say(format!("stopped: {}", states.join(", ")), Tone::Good))
}

fn merge(client: &mut Client, address: &Address) -> Result<Done> {
    let Response::Agent { agent } = client.request(&Request::Merge { address: address.to_string(), strategy: None })?
    else {
        return Err(unexpected());
    };
    let tone = match agent.merge_state.as_ref().map(|m| m.exit_code()) {
        Some(0) => Tone::Good,
        _ => Tone::Bad,
    };
    Ok(Done::Say(crate::cli::commands::describe(&agent), tone))
}
