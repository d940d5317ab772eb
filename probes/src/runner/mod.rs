//! Runners: one run of one probe, turned into a [`ProbeResult`].
//!
//! [`run_probe`] is the single entry point. It guarantees that a run ends by
//! the probe's timeout (measured on the given [`Clock`]) with
//! [`Outcome::Timeout`], and that dropping the run part-way leaves nothing
//! behind (an `exec` command's process group is killed). Runners read the
//! agent only through [`ProbeContext`]; they decide pass or fail for one
//! run, never what a series of results means (that is the tracker's).
//!
//! `exec` lives in the `exec` submodule, `http_get` and `tcp_socket` in
//! `net`; the kinds the supervisor feeds (`log_line`, `file_exists`,
//! `event`, `idle`) are answered here.

mod exec;
mod net;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::clock::Clock;
use crate::context::ProbeContext;
use crate::spec::ProbeKind;

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The check passed.
    Success,
    /// The check failed.
    Failure,
    /// The run took longer than `timeout_seconds`; a failure.
    Timeout,
}

/// The result of one run, with a message for people: exit code and stderr
/// tail, HTTP status, the matched line, why it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeResult {
    /// How the run ended.
    pub outcome: Outcome,
    /// What happened, in a line or so.
    pub message: String,
}

impl ProbeResult {
    /// A passing run.
    pub fn success(message: impl Into<String>) -> Self {
        ProbeResult { outcome: Outcome::Success, message: message.into() }
    }

    /// A failing run.
    pub fn failure(message: impl Into<String>) -> Self {
        ProbeResult { outcome: Outcome::Failure, message: message.into() }
    }

    /// A run that timed out.
    pub fn timeout(message: impl Into<String>) -> Self {
        ProbeResult { outcome: Outcome::Timeout, message: message.into() }
    }

    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Success
    }
}

/// Runs `kind` once against the agent in `ctx`, giving up after `timeout`
/// on `clock`.
pub async fn run_probe(kind: &ProbeKind, timeout: Duration, ctx: &dyn ProbeContext, clock: &dyn Clock) -> ProbeResult {
    let deadline = clock.now() + timeout;
    match kind {
        // exec handles its own deadline: it must kill and reap the command.
        ProbeKind::Exec(exec) => exec::run(&exec.command, ctx, clock, deadline, timeout).await,
        ProbeKind::HttpGet(http) => {
            within(clock, deadline, timeout, net::http_get(http, http.allow_remote || ctx.allow_remote_hosts())).await
        }
        ProbeKind::TcpSocket(tcp) => {
            within(clock, deadline, timeout, net::tcp_socket(tcp, tcp.allow_remote || ctx.allow_remote_hosts())).await
        }
        ProbeKind::FileExists(path) => within(clock, deadline, timeout, file_exists(ctx.worktree(), path)).await,
        ProbeKind::LogLine(pattern) => log_line(ctx, pattern.regex()),
        ProbeKind::Event(name) => event(ctx, name),
        ProbeKind::Idle(idle) => idle_check(ctx.last_activity(), clock.now(), Duration::from_secs_f64(idle.seconds)),
    }
}

/// `run` unless `deadline` passes first.
async fn within(
    clock: &dyn Clock,
    deadline: Instant,
    timeout: Duration,
    run: impl Future<Output = ProbeResult>,
) -> ProbeResult {
    tokio::select! {
        result = run => result,
        () = clock.sleep_until(deadline) => ProbeResult::timeout(timed_out(timeout)),
    }
}

pub(crate) fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}s", timeout.as_secs_f64())
}

async fn file_exists(worktree: &Path, relative: &Path) -> ProbeResult {
    match tokio::fs::metadata(worktree.join(relative)).await {
        Ok(_) => ProbeResult::success(format!("{} exists", relative.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            ProbeResult::failure(format!("{} does not exist", relative.display()))
        }
        Err(err) => ProbeResult::failure(format!("cannot check {}: {err}", relative.display())),
    }
}

fn log_line(ctx: &dyn ProbeContext, pattern: &Regex) -> ProbeResult {
    match ctx.first_line_matching(pattern) {
        Some(line) => ProbeResult::success(format!("output matched /{pattern}/: {}", truncate(&line, 200))),
        None => ProbeResult::failure(format!("no output line has matched /{pattern}/ yet")),
    }
}

fn event(ctx: &dyn ProbeContext, name: &str) -> ProbeResult {
    if ctx.has_seen_event(name) {
        ProbeResult::success(format!("harness event {name:?} seen"))
    } else {
        ProbeResult::failure(format!("harness event {name:?} not seen yet"))
    }
}

fn idle_check(last_activity: Instant, now: Instant, limit: Duration) -> ProbeResult {
    let idle = now.saturating_duration_since(last_activity);
    if idle >= limit {
        ProbeResult::failure(format!(
            "no output or progress for {:.1}s (limit {}s)",
            idle.as_secs_f64(),
            limit.as_secs_f64()
        ))
    } else {
        ProbeResult::success(format!(
            "last output or progress {:.1}s ago (limit {}s)",
            idle.as_secs_f64(),
            limit.as_secs_f64()
        ))
    }
}

/// At most `max` characters of `text`, the end marked when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use crate::context::AgentObservations;
    use crate::spec::{IdleAction, Pattern, ProbeSet, ProbeSpec};
    use std::ffi::OsString;

    /// The test process's environment, as an agent's would be.
    pub(crate) fn test_env() -> Vec<(OsString, OsString)> {
        std::env::vars_os().collect()
    }

    pub(crate) fn observations(worktree: &Path, set: &ProbeSet, start: Instant) -> AgentObservations {
        AgentObservations::new(worktree, test_env(), set, start)
    }

    #[tokio::test]
    async fn file_exists_is_relative_to_the_worktree() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = observations(dir.path(), &ProbeSet::default(), Instant::now());
        let kind = ProbeKind::FileExists("sub/ready".into());
        let clock = SystemClock;
        let missing = run_probe(&kind, Duration::from_secs(5), &ctx, &clock).await;
        assert_eq!(missing, ProbeResult::failure("sub/ready does not exist"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/ready"), "").unwrap();
        let present = run_probe(&kind, Duration::from_secs(5), &ctx, &clock).await;
        assert_eq!(present, ProbeResult::success("sub/ready exists"));
    }

    #[tokio::test]
    async fn log_line_passes_once_any_line_since_start_matched() {
        let pattern = Pattern::new(r"^Listening on port \d+$").unwrap();
        let set =
            ProbeSet { startup: Some(ProbeSpec::new(ProbeKind::LogLine(pattern.clone()))), ..ProbeSet::default() };
        let clock = ManualClock::new();
        let ctx = observations(Path::new("/"), &set, clock.now());
        let kind = ProbeKind::LogLine(pattern);
        let result = run_probe(&kind, Duration::from_secs(1), &ctx, &clock).await;
        assert_eq!(result.outcome, Outcome::Failure);
        assert!(result.message.contains(r"/^Listening on port \d+$/"), "{}", result.message);
        ctx.record_line("compiling...", clock.now());
        ctx.record_line("Listening on port 3000", clock.now());
        ctx.record_line("GET /", clock.now());
        let result = run_probe(&kind, Duration::from_secs(1), &ctx, &clock).await;
        assert_eq!(result.outcome, Outcome::Success);
        assert!(result.message.ends_with("Listening on port 3000"), "{}", result.message);
    }

    #[tokio::test]
    async fn event_passes_once_the_harness_reported_it() {
        let clock = ManualClock::new();
        let ctx = observations(Path::new("/"), &ProbeSet::default(), clock.now());
        let kind = ProbeKind::Event("init".into());
        let before = run_probe(&kind, Duration::from_secs(1), &ctx, &clock).await;
        assert_eq!(before.outcome, Outcome::Failure);
        ctx.record_event("assistant", clock.now());
        assert!(!run_probe(&kind, Duration::from_secs(1), &ctx, &clock).await.passed());
        ctx.record_event("init", clock.now());
        assert!(run_probe(&kind, Duration::from_secs(1), &ctx, &clock).await.passed());
    }

    #[tokio::test]
    async fn idle_fails_after_the_limit_without_activity() {
        let clock = ManualClock::new();
        let ctx = observations(Path::new("/"), &ProbeSet::default(), clock.now());
        let kind = ProbeKind::Idle(IdleAction { seconds: 300.0 });
        let timeout = Duration::from_secs(1);
        clock.advance_secs(299.0);
        assert!(run_probe(&kind, timeout, &ctx, &clock).await.passed());
        clock.advance_secs(1.0);
        let idle = run_probe(&kind, timeout, &ctx, &clock).await;
        assert_eq!(idle, ProbeResult::failure("no output or progress for 300.0s (limit 300s)"));
        // Output is activity: the agent is no longer idle.
        ctx.record_line("still here", clock.now());
        clock.advance_secs(10.0);
        let busy = run_probe(&kind, timeout, &ctx, &clock).await;
        assert_eq!(busy, ProbeResult::success("last output or progress 10.0s ago (limit 300s)"));
        clock.advance_secs(290.0);
        assert!(!run_probe(&kind, timeout, &ctx, &clock).await.passed());
        ctx.record_event("progress", clock.now());
        assert!(run_probe(&kind, timeout, &ctx, &clock).await.passed());
    }

    #[test]
    fn truncate_cuts_on_characters() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo", 2), "hé…");
    }
}
