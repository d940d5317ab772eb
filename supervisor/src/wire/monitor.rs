//! The daemon-monitor protocol, as types: what the daemon gives a monitor
//! to run (`spec.json`), what the monitor says on `monitor.sock`, what the
//! daemon tells it, and how the agent ended (`exit.json`).
//!
//! A peer of `monitor.sock` first sends one JSON line saying what it is
//! ([`Hello`]):
//! - `{"role":"daemon"}`: the monitor sends JSON lines of [`MonitorMessage`]:
//!   `status` (at once), `output` (the log grew), `restarting`, `started`
//!   and `exit` (the agent's last process is gone); the daemon sends JSON
//!   lines of [`MonitorCommand`], such as `{"t":"stop","grace_secs":N}`
//!   and `{"t":"input","data":"text"}`.
//! - `{"role":"attach","replay":BYTES,"rows":R,"cols":C}`: raw bytes both
//!   ways: the last BYTES of the log then everything new, and keystrokes
//!   into the PTY. `rows` and `cols` (optional, both or neither) are the
//!   client's terminal size, applied to the PTY before anything else.
//! - `{"role":"resize","rows":R,"cols":C}`: sets the PTY's size (the
//!   kernel sends SIGWINCH to the agent's foreground process group), then
//!   the monitor closes the connection. The attach stream is raw bytes
//!   with no framing, so an attached client opens one of these on each
//!   change of its terminal's size, one at a time, waiting for the close.
//!
//! Owns: the shapes and their JSON spellings. Never does: read or write a
//! file or a socket (the monitor and the daemon do).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::restart::RestartSpec;

/// What the monitor runs. Written by the daemon to `spec.json` (mode 0600:
/// the environment may hold API keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Raw mode, no echo: for harnesses that speak JSON lines over the PTY.
    #[serde(default)]
    pub raw: bool,
    /// Where the agent's standard input comes from.
    #[serde(default)]
    pub input: InputMode,
    /// Written to the agent's input as soon as it starts (a task given as
    /// the first message).
    #[serde(default)]
    pub first_input: Option<String>,
    /// What to do when the agent's process ends.
    #[serde(default)]
    pub restart: RestartSpec,
    /// The agent's stop grace (SIGTERM, this long, SIGKILL), for a stop
    /// the monitor decides itself (it was told to go by a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<f64>,
    pub rows: u16,
    pub cols: u16,
    /// The sandbox the agent's own process applies before it execs the
    /// CLI (every run: first, restarted, follow-up). Absent in older specs:
    /// nothing to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sys::sandbox::Plan>,
    /// The metering proxy the monitor runs for the agent (`--meter
    /// proxy`); absent: none, the agent talks to its provider itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<MeterSpec>,
}

/// What the monitor's metering proxy serves. Holds no real key: those
/// reach the monitor on its standard input ([`ProxyKeys`]), never a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterSpec {
    /// The agent's own token, the only one its proxy takes. It is in the
    /// agent's environment too; it is good for nothing else.
    pub token: String,
    /// Base URLs of the upstreams, by provider family.
    pub upstreams: BTreeMap<crate::proxy::Family, String>,
    /// Variables of the agent's environment the monitor sets to its
    /// proxy's URL (`http://127.0.0.1:PORT`) followed by the value here
    /// (`""`, or `/v1` for OpenAI's convention).
    pub url_env: BTreeMap<String, String>,
    /// The families whose real key the proxy holds (the keys themselves
    /// are never written), and whether each goes as a bearer token: a
    /// later start without them (a new daemon's) knows what it lacks.
    #[serde(default)]
    pub keyed: BTreeMap<crate::proxy::Family, bool>,
}

/// Stands for the proxy's URL in the agent's arguments (Codex takes its
/// provider's `base_url` on its command line); the monitor replaces it in
/// every command it runs for the agent (the first, a restart, a
/// follow-up, an assigned task's): the port is the kernel's choice, made
/// when the monitor binds it.
pub const PROXY_URL_MARK: &str = "{corral-proxy-url}";

/// The real keys, by provider family, as the daemon writes them to a new
/// monitor's standard input (one JSON object, then end of file). `Debug`
/// prints no key.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyKeys(pub BTreeMap<crate::proxy::Family, ProxyKey>);

/// One real key and how its provider takes it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyKey {
    pub key: String,
    /// `Authorization: Bearer` (OpenAI, `ANTHROPIC_AUTH_TOKEN`), else the
    /// provider's key header.
    #[serde(default)]
    pub bearer: bool,
}

impl std::fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyKey").field("key", &"(hidden)").field("bearer", &self.bearer).finish()
    }
}

impl std::fmt::Debug for ProxyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys().map(|family| format!("{} (hidden)", family.name()))).finish()
    }
}

/// Where an agent's standard input comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// The PTY, like a terminal.
    #[default]
    Pty,
    /// A FIFO (`stdin.fifo`) the monitor writes to and can close, so the
    /// agent sees the end of its input.
    Pipe,
    /// `/dev/null`.
    Null,
}

impl From<corral_harness::launch::Input> for InputMode {
    fn from(input: corral_harness::launch::Input) -> InputMode {
        match input {
            corral_harness::launch::Input::Pty => InputMode::Pty,
            corral_harness::launch::Input::Pipe => InputMode::Pipe,
            corral_harness::launch::Input::Null => InputMode::Null,
        }
    }
}

/// How the agent ended. Written once, atomically, to `exit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stop_requested: bool,
    /// Set when the agent could not be started at all.
    pub error: Option<String>,
    pub ended_at: DateTime<Utc>,
    /// Bytes the agent printed that its output log could not keep (a full
    /// disk): the agent ran on, its output was not blocked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_bytes_lost: u64,
    /// The resource limit that ended its last run, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<crate::sys::sandbox::LimitHit>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Messages from the monitor to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum MonitorMessage {
    Status {
        pid: u32,
        monitor_pid: u32,
        log_len: u64,
        exit: Option<ExitRecord>,
    },
    Output {
        log_len: u64,
    },
    /// The agent ended and will run again after `backoff_secs`.
    Restarting {
        count: u32,
        reason: String,
        backoff_secs: f64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A new process of the agent started (a follow-up, with its tag).
    Started {
        pid: u32,
        tag: Option<String>,
    },
    Exit {
        record: ExitRecord,
    },
    /// The agent's proxy asks whether a model call may go upstream; the
    /// daemon answers with `admission`. Sent again to a daemon that
    /// connects while it waits.
    Admit {
        ask: crate::proxy::Ask,
    },
    /// A model call has ended (or was refused). Every call so far is sent
    /// to each daemon that connects, in the order they ended (the record's
    /// `index`); the daemon journals each once. (Calls end in any order:
    /// an agent may make several at once.)
    ModelCall {
        record: crate::proxy::CallRecord,
    },
    /// A call an earlier daemon admitted (with `max_output`) that is still
    /// under way, told to each daemon that connects.
    Admitted {
        ask: crate::proxy::Ask,
        #[serde(default)]
        max_output: Option<u64>,
    },
}

/// Commands from the daemon to the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum MonitorCommand {
    /// Stop the agent. With `probe_failed`, the stop counts as a failure
    /// for the restart policy (a liveness or startup probe failed);
    /// otherwise it is final.
    Stop {
        grace_secs: f64,
        #[serde(default)]
        probe_failed: bool,
    },
    /// Write to the agent's input. A message carries its id: one the
    /// monitor has written before (a restarted daemon redelivering what it
    /// had not yet journaled as delivered) is dropped, so each message
    /// arrives once.
    Input {
        data: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Close the agent's input (a FIFO): it will read end-of-file.
    CloseInput,
    /// Run this command after the agent's current process ends (stdin from
    /// `/dev/null`); `tag` comes back in the `started` message. A tag seen
    /// before is ignored, and nothing is queued once the monitor finishes.
    Then { command: Vec<String>, tag: String },
    /// With `hold`, a process that ends cleanly with no follow-up queued
    /// does not end the agent: the monitor waits, no process running, for
    /// a follow-up (its children's notices, for a CLI that takes a message
    /// as a new process), a stop, or `hold: false`.
    Hold { hold: bool },
    /// The answer to an `admit`. A `hold` is not the last: another
    /// admission for the same call follows.
    Admission { call: u64, decision: crate::proxy::Decision },
    /// Stop (SIGSTOP) every process of the agent: a `pause` budget is spent.
    Freeze,
    /// Let them run again (SIGCONT): the budget was raised.
    Thaw,
}

/// The first line a peer of `monitor.sock` sends: what it is (`role`:
/// `daemon`, `attach` or `resize`) and, for the raw roles, what it wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub role: String,
    /// `attach`: how many bytes of the log's end to send first.
    #[serde(default)]
    pub replay: u64,
    /// `attach` and `resize`: the terminal's size (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}
