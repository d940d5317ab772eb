//! `exec` probes: one command in the agent's worktree, exit status 0 passes.
//!
//! Only this module starts or signals processes. The command runs in a
//! process group of its own (its pid is the group id) with exactly the
//! agent's environment, stdin from `/dev/null`, and its output kept only as a
//! short tail for the message. It guarantees:
//!
//! - when the timeout passes, or the run is dropped part-way, the whole group
//!   gets SIGKILL, so a `sh -c` with children leaves nothing behind; on
//!   timeout the command is also reaped before the run returns;
//! - when the command exits by itself, whatever it left running in its group
//!   is killed too, so a background child holding the output pipes open
//!   cannot stretch the run to the timeout;
//! - the group is only ever signalled while its leader is not yet reaped.
//!   A group id cannot be reused while its leader is a zombie, so the
//!   signal cannot reach an unrelated process. That is why exit is first
//!   observed with `waitid(WNOWAIT)`, which leaves the child waitable, and
//!   only then reaped through tokio.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{timed_out, truncate, ProbeResult};
use crate::clock::Clock;
use crate::context::ProbeContext;

/// Bytes of each output stream kept for the message.
const TAIL_BYTES: usize = 4096;
/// Characters of output shown in a message.
const MESSAGE_TAIL_CHARS: usize = 300;

pub(super) async fn run(
    command: &[String],
    ctx: &dyn ProbeContext,
    clock: &dyn Clock,
    deadline: Instant,
    timeout: Duration,
) -> ProbeResult {
    if command.is_empty() {
        return ProbeResult::failure("exec.command is empty");
    }
    let command: Vec<String> = ctx.exec_prefix().into_iter().chain(command.iter().cloned()).collect();
    let (program, args) = command.split_first().expect("a command that is not empty");
    let mut child = match Command::new(program)
        .args(args)
        .current_dir(ctx.worktree())
        .env_clear()
        .envs(ctx.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            return ProbeResult::failure(format!("cannot run {program:?} in {}: {err}", ctx.worktree().display()))
        }
    };
    let pid = child.id().expect("a child that has not been waited for has a pid") as libc::pid_t;
    // Declared after `child` so that, when this future is dropped, the group
    // is killed before tokio's kill-on-drop sends the leader to be reaped.
    let mut group = ProcessGroup { id: pid, leader_unreaped: true };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut out_tail = Tail::default();
    let mut err_tail = Tail::default();
    let mut output = Box::pin(async {
        tokio::join!(out_tail.fill(stdout), err_tail.fill(stderr));
    });
    let mut output_done = false;
    let mut exited = tokio::task::spawn_blocking(move || wait_exited_unreaped(pid));
    let mut deadline_passed = clock.sleep_until(deadline);

    let exit_seen = loop {
        tokio::select! {
            () = &mut output, if !output_done => output_done = true,
            seen = &mut exited => break matches!(seen, Ok(Ok(()))),
            () = &mut deadline_passed => {
                group.kill();
                group.leader_unreaped = false;
                // SIGKILL was sent: this returns as soon as the kernel is done.
                let _ = child.wait().await;
                drop(output);
                let tail = message_tail(&err_tail, &out_tail);
                return ProbeResult::timeout(format!("{}{tail}", timed_out(timeout)));
            }
        }
    };
    if exit_seen {
        // The leader is a zombie: sweep whatever it left in its group.
        group.kill();
    }
    group.leader_unreaped = false;
    let status = child.wait().await;
    if !output_done {
        // Only a process that left the group (setsid) can still hold the
        // pipes; stop reading at the deadline then, the status is known.
        tokio::select! {
            () = &mut output => {}
            () = &mut deadline_passed => {}
        }
    }
    drop(output);
    let tail = message_tail(&err_tail, &out_tail);
    match status {
        Ok(status) => describe(status, &tail),
        Err(err) => ProbeResult::failure(format!("cannot wait for {program:?}: {err}{tail}")),
    }
}

fn describe(status: ExitStatus, tail: &str) -> ProbeResult {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => ProbeResult::success("exit code 0"),
        (Some(code), _) => ProbeResult::failure(format!("exit code {code}{tail}")),
        (None, Some(signal)) => ProbeResult::failure(format!("killed by signal {signal}{tail}")),
        (None, None) => ProbeResult::failure(format!("ended with {status}{tail}")),
    }
}

/// `": <last lines>"` of stderr, or of stdout when stderr is empty; `""`
/// when both are.
fn message_tail(stderr: &Tail, stdout: &Tail) -> String {
    let pick = if stderr.text().trim().is_empty() { stdout.text() } else { stderr.text() };
    let lines: Vec<&str> = pick.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let joined = lines[lines.len().saturating_sub(5)..].join(" | ");
    let chars = joined.chars().count();
    if chars > MESSAGE_TAIL_CHARS {
        let start = joined.char_indices().nth(chars - MESSAGE_TAIL_CHARS).map_or(0, |(at, _)| at);
        format!(": …{}", &joined[start..])
    } else {
        format!(": {}", truncate(&joined, MESSAGE_TAIL_CHARS))
    }
}

/// The last [`TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    /// Reads `from` to its end (or first error), keeping the tail.
    async fn fill(&mut self, mut from: impl AsyncRead + Unpin) {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.bytes.extend_from_slice(&buf[..n]);
                    if self.bytes.len() > TAIL_BYTES {
                        let excess = self.bytes.len() - TAIL_BYTES;
                        self.bytes.drain(..excess);
                    }
                }
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The command's process group; see the module documentation for why it
/// is only signalled while the leader is unreaped.
struct ProcessGroup {
    id: libc::pid_t,
    leader_unreaped: bool,
}

impl ProcessGroup {
    fn kill(&self) {
        if self.leader_unreaped {
            // SAFETY: killpg has no memory effects; the group id is ours
            // while its leader is unreaped. ESRCH (nothing left) is fine.
            unsafe {
                libc::killpg(self.id, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Blocks until the child `pid` has exited, without reaping it.
fn wait_exited_unreaped(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t; WNOWAIT leaves the child
        // waitable for tokio.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{observations, test_env};
    use super::super::{run_probe, Outcome};
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use crate::context::AgentObservations;
    use crate::spec::{ExecAction, ProbeKind, ProbeSet};
    use std::ffi::OsString;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn exec(command: &[&str]) -> ProbeKind {
        ProbeKind::Exec(ExecAction { command: command.iter().map(|s| s.to_string()).collect() })
    }

    async fn run_in(dir: &Path, command: &[&str], timeout: f64) -> ProbeResult {
        let ctx = observations(dir, &ProbeSet::default(), Instant::now());
        run_probe(&exec(command), Duration::from_secs_f64(timeout), &ctx, &SystemClock).await
    }

    /// A `sleep` argument no other process has: the sleep is findable in
    /// /proc by it.
    fn unique_sleep(seconds: u32) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!("{seconds}.{}{:04}1", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Pids of live (not zombie) processes whose command line holds `marker`.
    fn live_processes_with(marker: &str) -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // A zombie's cmdline is empty; a vanished process cannot be read.
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Polls `condition` until it holds or 20 s pass.
    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn exit_zero_passes_and_nonzero_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = run_in(dir.path(), &["test", "-f", "x"], 10.0).await;
        assert_eq!(missing, ProbeResult::failure("exit code 1"));
        std::fs::write(dir.path().join("x"), "").unwrap();
        let present = run_in(dir.path(), &["test", "-f", "x"], 10.0).await;
        assert_eq!(present, ProbeResult::success("exit code 0"));
    }

    #[tokio::test]
    async fn a_failure_reports_the_exit_code_and_the_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let result = run_in(dir.path(), &["sh", "-c", "echo starting; echo 'database not up' >&2; exit 3"], 10.0).await;
        assert_eq!(result, ProbeResult::failure("exit code 3: database not up"));
        let stdout_only = run_in(dir.path(), &["sh", "-c", "echo only stdout; exit 4"], 10.0).await;
        assert_eq!(stdout_only, ProbeResult::failure("exit code 4: only stdout"));
        let signalled = run_in(dir.path(), &["sh", "-c", "kill -TERM $$"], 10.0).await;
        assert_eq!(signalled, ProbeResult::failure("killed by signal 15"));
    }

    #[tokio::test]
    async fn the_command_runs_in_the_worktree_with_exactly_the_agent_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("here"), "").unwrap();
        let path = std::env::var_os("PATH").expect("tests need PATH");
        let env: Vec<(OsString, OsString)> = vec![("PATH".into(), path), ("PROBE_FLAVOUR".into(), "mint".into())];
        let ctx = AgentObservations::new(dir.path(), env, &ProbeSet::default(), Instant::now());
        let kind = exec(&["sh", "-c", r#"test -f here && test "$PROBE_FLAVOUR" = mint && test -z "$HOME""#]);
        let result = run_probe(&kind, Duration::from_secs(10), &ctx, &SystemClock).await;
        assert_eq!(result, ProbeResult::success("exit code 0"));
    }

    #[tokio::test]
    async fn a_relative_program_is_found_in_the_worktree() {
        let dir = tempfile::tempdir().unwrap();
        // Written by another process: a script written through a file
        // descriptor of this one could be held open by a concurrent test's
        // fork, and exec would fail with ETXTBSY.
        let written = std::process::Command::new("sh")
            .args(["-c", r"printf '#!/bin/sh\necho not healthy yet >&2\nexit 7\n' > check.sh && chmod +x check.sh"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(written.success());
        let result = run_in(dir.path(), &["./check.sh"], 10.0).await;
        assert_eq!(result, ProbeResult::failure("exit code 7: not healthy yet"));
    }

    #[tokio::test]
    async fn a_missing_program_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let result = run_in(dir.path(), &["corral-no-such-program"], 10.0).await;
        assert_eq!(result.outcome, Outcome::Failure);
        assert!(result.message.starts_with("cannot run \"corral-no-such-program\""), "{}", result.message);
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_and_counts_as_timed_out() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = unique_sleep(5);
        let started = Instant::now();
        let result = run_in(dir.path(), &["sleep", &sleep], 0.2).await;
        let took = started.elapsed();
        assert_eq!(result, ProbeResult::timeout("timed out after 0.2s"));
        assert!(took < Duration::from_secs(4), "took {took:?}, the sleep is 5 s");
        // The command was killed and reaped before the run returned.
        assert_eq!(live_processes_with(&sleep), Vec::<u32>::new());
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = unique_sleep(30);
        let script = format!("sleep {sleep} & echo started > started; wait");
        let clock = Arc::new(ManualClock::new());
        let ctx = Arc::new(observations(dir.path(), &ProbeSet::default(), clock.now()));
        let run = {
            let (clock, ctx) = (clock.clone(), ctx.clone());
            let kind = exec(&["sh", "-c", &script]);
            tokio::spawn(async move { run_probe(&kind, Duration::from_secs(1), &*ctx, &*clock).await })
        };
        let started = dir.path().join("started");
        eventually("the command has started its child", || started.exists()).await;
        assert_eq!(live_processes_with(&sleep).len(), 2, "sh and sleep run");
        clock.advance_secs(1.0);
        let result = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the run ends once its timeout passed")
            .unwrap();
        assert_eq!(result, ProbeResult::timeout("timed out after 1s"));
        eventually("sh and its background sleep are gone", || live_processes_with(&sleep).is_empty()).await;
    }

    #[tokio::test]
    async fn what_a_passing_command_leaves_running_is_killed_without_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = unique_sleep(30);
        let started = Instant::now();
        // The background sleep inherits stdout and stderr: without the sweep
        // the run would read until the 20 s timeout.
        let result = run_in(dir.path(), &["sh", "-c", &format!("sleep {sleep} & echo left it running")], 20.0).await;
        assert_eq!(result, ProbeResult::success("exit code 0"));
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        eventually("the background sleep is gone", || live_processes_with(&sleep).is_empty()).await;
    }

    #[tokio::test]
    async fn dropping_a_run_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = unique_sleep(30);
        let script = format!("sleep {sleep} & echo started > started; wait");
        let ctx = Arc::new(AgentObservations::new(dir.path(), test_env(), &ProbeSet::default(), Instant::now()));
        let run = tokio::spawn(async move {
            run_probe(&exec(&["sh", "-c", &script]), Duration::from_secs(60), &*ctx, &SystemClock).await
        });
        let started = dir.path().join("started");
        eventually("the command has started its child", || started.exists()).await;
        assert_eq!(live_processes_with(&sleep).len(), 2, "sh and sleep run");
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        eventually("sh and its background sleep are gone", || live_processes_with(&sleep).is_empty()).await;
    }
}
