//! The agent's metering proxy, run by its monitor (`--meter proxy`).
//!
//! The proxy ([`crate::proxy`]) listens on 127.0.0.1 at a port of the
//! kernel's choosing; the agent's environment (and Codex's command line)
//! is pointed at it before the agent starts. The real keys come on the
//! monitor's standard input and stay in its memory.
//!
//! Each call's admission is asked of the daemon over the daemon's
//! connection (`admit`, answered by `admission`); while no daemon answers
//! (it is down, or restarting) the call waits up to [`ADMISSION_WAIT`],
//! then is refused: no call goes upstream unmetered. A call the daemon
//! holds (`hold`: a `pause` budget is spent) waits until it is answered
//! for good, however long the pause. Each call's record is
//! appended to `calls.jsonl` in the agent's folder and synced before the
//! daemon is told, and every record is told again to each daemon that
//! connects, so calls made while the daemon was down reach the journal.
//!
//! Each admission is appended to `admitted.jsonl` (and synced) before its
//! call is sent: a monitor killed while no daemon listened leaves the
//! next daemon the calls it may have sent and never recorded.
//!
//! Owns: the proxy's thread and runtime, `calls.jsonl` (once the monitor
//! is gone, the daemon appends there the charges it makes for calls the
//! monitor never recorded, [`record_call`]), `admitted.jsonl`. Never does:
//! decide an admission (the daemon does) or journal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::proxy::server::{Admission, OpenCalls};
use crate::proxy::{Ask, CallRecord, Credential, Decision, Gate, ProxyConfig, Token, Upstream};
use crate::sys::paths::AgentDir;
use crate::wire::monitor::{MeterSpec, MonitorSpec, ProxyKeys, PROXY_URL_MARK};

/// How long a call waits for the daemon's admission before it is refused.
pub(super) const ADMISSION_WAIT: Duration = Duration::from_secs(30);

/// How long calls still under way when the agent ends are read on for
/// their usage before the rest are charged their estimate.
pub(super) const CALLS_SETTLE_WAIT: Duration = Duration::from_secs(10);

/// The agent's calls file.
pub(super) fn calls_file(agent: &AgentDir) -> PathBuf {
    agent.dir.join("calls.jsonl")
}

/// Reads the calls an agent's proxy recorded (a torn last line is skipped).
pub fn read_calls(agent: &AgentDir) -> Vec<CallRecord> {
    read_lines(&calls_file(agent))
}

/// The agent's admissions file: every call its proxy was let send.
pub(super) fn admitted_file(agent: &AgentDir) -> PathBuf {
    agent.dir.join("admitted.jsonl")
}

/// One line of `admitted.jsonl`: a call let go upstream, and the output
/// cap it went with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdmittedCall {
    pub ask: Ask,
    pub max_output: Option<u64>,
}

/// Reads the calls an agent's proxy was admitted for; `None` when its
/// monitor kept no admissions file (an earlier build's).
pub fn read_admitted(agent: &AgentDir) -> Option<Vec<AdmittedCall>> {
    let path = admitted_file(agent);
    path.exists().then(|| read_lines(&path))
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Vec<T> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

struct MonitorGate {
    shared: Arc<Shared>,
    /// `admitted.jsonl`.
    admitted: PathBuf,
    /// The calls file, locked from a record's append until it is in
    /// `calls`: the file and what the daemon is told keep one order, so
    /// a daemon can take from the file what it was never told.
    file: std::sync::Mutex<PathBuf>,
}

impl Gate for MonitorGate {
    fn admit(&self, ask: Ask) -> Admission {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let call = ask.call;
        let file = self.admitted.clone();
        {
            let mut state = self.shared.state.lock().unwrap();
            state.calls_in_flight += 1;
            state.admission_waiters.insert(call, tx);
            state.asks.insert(call, ask);
            state.asks_generation += 1;
        }
        self.shared.changed.notify_all();
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut rx = rx;
            loop {
                match tokio::time::timeout(ADMISSION_WAIT, &mut rx).await {
                    Ok(Ok(Decision::Allow { max_output })) => {
                        // Kept before it is sent (as `State::admitted` holds
                        // it); a call whose admission cannot be kept is not sent.
                        let line = shared.state.lock().unwrap().admitted.get(&call).cloned();
                        let kept = match line {
                            Some(line) => append(&file, &line),
                            None => Err(std::io::Error::other("its admission was not held")),
                        };
                        return match kept {
                            Ok(()) => Decision::Allow { max_output },
                            Err(err) => {
                                tracing::warn!("call {call}: cannot keep its admission in {}: {err}", file.display());
                                Decision::Refuse {
                                    message: format!(
                                        "corral: the call's admission could not be kept ({err}), so the call \
                                         was not sent"
                                    ),
                                }
                            }
                        };
                    }
                    Ok(Ok(decision)) => return decision,
                    // Held for a paused budget: waits as long as the pause
                    // lasts (the agent's processes are frozen meanwhile).
                    Err(_) if shared.state.lock().unwrap().held_calls.contains(&call) => continue,
                    _ => {}
                }
                let mut state = shared.state.lock().unwrap();
                state.asks.remove(&call);
                state.admission_waiters.remove(&call);
                state.held_calls.remove(&call);
                tracing::warn!("call {call}: no admission from the daemon; refused");
                return Decision::Refuse {
                    message: format!(
                        "corral: the daemon did not answer within {} s, so the call was not sent (a call \
                         corral cannot meter is never sent)",
                        ADMISSION_WAIT.as_secs()
                    ),
                };
            }
        })
    }

    fn record(&self, mut call: CallRecord) {
        let file = self.file.lock().unwrap();
        // Only a record's own append adds to `calls`, under the file's lock.
        call.index = Some(self.shared.state.lock().unwrap().calls.len() as u64);
        if let Err(err) = append(&file, &call) {
            // The daemon still hears of it, and journals it.
            tracing::warn!("cannot append call {} to {}: {err}", call.call, file.display());
        }
        let mut state = self.shared.state.lock().unwrap();
        drop(file);
        state.admitted.remove(&call.call);
        state.calls_in_flight = state.calls_in_flight.saturating_sub(1);
        state.calls.push(call);
        drop(state);
        self.shared.changed.notify_all();
    }
}

/// Appends one line and syncs it; a line that cannot be written whole
/// is cut back off, so the next append does not land on its torn piece.
fn append(file: &std::path::Path, line: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
    let len = out.metadata()?.len();
    let written = out.write_all(&line).and_then(|()| out.sync_data());
    if written.is_err() {
        let _ = out.set_len(len);
    }
    written
}

/// Appends a record to the calls file of an agent whose monitor is gone
/// (the daemon's charge for a call it never recorded), so that every
/// later daemon finds the call answered there.
pub fn record_call(agent: &AgentDir, call: &CallRecord) -> std::io::Result<()> {
    append(&calls_file(agent), call)
}

/// Reads the real keys from standard input (nothing there: no keys).
pub(super) fn read_keys() -> anyhow::Result<ProxyKeys> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(ProxyKeys::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("the keys on standard input are not readable: {e}"))
}

/// Starts the proxy on a thread of its own and returns its address and
/// its calls under way.
pub(super) fn start(
    meter: &MeterSpec,
    keys: ProxyKeys,
    shared: Arc<Shared>,
    agent: &AgentDir,
) -> anyhow::Result<(SocketAddr, OpenCalls)> {
    let upstreams = meter
        .upstreams
        .iter()
        .map(|(family, base)| {
            let credential = keys.0.get(family).map(|k| match k.bearer {
                true => Credential::Bearer(k.key.clone()),
                false => Credential::ApiKey(k.key.clone()),
            });
            (*family, Upstream { base: base.clone(), credential })
        })
        .collect();
    let config = ProxyConfig { token: Token(meter.token.clone()), upstreams };
    // Its being there says admissions are kept: a daemon then charges
    // only the calls it names.
    let admitted = admitted_file(agent);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&admitted)
        .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", admitted.display()))?;
    let gate = Arc::new(MonitorGate { shared, admitted, file: std::sync::Mutex::new(calls_file(agent)) });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("proxy".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(err) => {
                let _ = tx.send(Err(anyhow::anyhow!("cannot start the proxy's runtime: {err}")));
                return;
            }
        };
        runtime.block_on(async move {
            match crate::proxy::start(config, gate).await {
                Ok(proxy) => {
                    let _ = tx.send(Ok((proxy.addr, proxy.open.clone())));
                    // Serves for the monitor's life.
                    std::future::pending::<()>().await;
                    drop(proxy);
                }
                Err(err) => {
                    let _ = tx.send(Err(anyhow::anyhow!("cannot start the metering proxy: {err}")));
                }
            }
        });
    })?;
    rx.recv().map_err(|_| anyhow::anyhow!("the metering proxy's thread ended before it started"))?
}

/// Points the agent at its proxy: the spec's variables and arguments, and
/// under `--network model` its sandbox's one reachable port.
pub(super) fn point_at(spec: &mut MonitorSpec, addr: SocketAddr) {
    let Some(meter) = spec.meter.clone() else { return };
    let url = format!("http://{addr}");
    for (name, suffix) in &meter.url_env {
        spec.env.insert(name.clone(), format!("{url}{suffix}"));
    }
    for arg in &mut spec.command {
        *arg = arg.replace(PROXY_URL_MARK, &url);
    }
    // opencode's provider, in the configuration corral gives it.
    for value in spec.env.values_mut() {
        if value.contains(PROXY_URL_MARK) {
            *value = value.replace(PROXY_URL_MARK, &url);
        }
    }
    // `--network model`: its own proxy is the model.
    if let Some(plan) = spec.sandbox.as_mut().filter(|plan| plan.model) {
        plan.connect_ports.push(addr.port());
    }
}
