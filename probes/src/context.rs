//! What probes may know about the agent they check.
//!
//! [`ProbeContext`] is the whole of what runners read from the supervisor:
//! the worktree, the environment, the output lines, the harness events and
//! the last activity. Runners never reach the agent any other way.
//! [`AgentObservations`] is a ready implementation the supervisor can feed
//! as the agent runs; it keeps no output, only what the probes ask about
//! (the first line each `log_line` pattern matched), so its memory does not
//! grow with the agent's output.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use regex::Regex;

use crate::spec::ProbeSet;

/// The agent as probes see it. The supervisor implements it, or uses
/// [`AgentObservations`]. Everything "since the agent started" means since
/// this run of the agent started: a restarted agent gets a fresh context.
pub trait ProbeContext: Send + Sync {
    /// The agent's worktree: `exec` runs there, `file_exists` is relative to it.
    fn worktree(&self) -> &Path;

    /// The agent's whole environment. `exec` commands get exactly this (the
    /// supervisor's own environment is not inherited), so it needs `PATH`.
    fn env(&self) -> Vec<(OsString, OsString)>;

    /// Words put before every `exec` command (a sandbox shim: the
    /// supervisor runs an agent's exec probes as confined as the agent).
    fn exec_prefix(&self) -> Vec<String> {
        Vec::new()
    }

    /// The first output line since the agent started that `pattern`
    /// matches, if any.
    fn first_line_matching(&self, pattern: &Regex) -> Option<String>;

    /// Whether the harness has reported an event named `name` since the
    /// agent started.
    fn has_seen_event(&self, name: &str) -> bool;

    /// The last time the agent showed output or progress (its start time
    /// until it has shown any).
    fn last_activity(&self) -> Instant;

    /// Whether `http_get` and `tcp_socket` may reach hosts other than
    /// loopback addresses even when the probe does not say `allow_remote =
    /// true`. Off unless the implementation says otherwise. Validation
    /// refuses a probe naming a host that is not loopback without
    /// `allow_remote`, so this matters for specs that were not validated
    /// and for loopback names that resolve elsewhere.
    fn allow_remote_hosts(&self) -> bool {
        false
    }
}

/// A [`ProbeContext`] fed by the supervisor as the agent runs: call
/// [`record_line`](Self::record_line) for each output line,
/// [`record_event`](Self::record_event) for each harness event and
/// [`record_activity`](Self::record_activity) for any other sign of
/// progress. Shareable between threads (`Arc<AgentObservations>`).
#[derive(Debug)]
pub struct AgentObservations {
    worktree: PathBuf,
    env: Vec<(OsString, OsString)>,
    allow_remote_hosts: bool,
    exec_prefix: Vec<String>,
    seen: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    watches: Vec<LineWatch>,
    events: HashSet<String>,
    last_activity: Instant,
}

#[derive(Debug)]
struct LineWatch {
    pattern: Regex,
    first_match: Option<String>,
}

impl AgentObservations {
    /// Observations of an agent started at `started_at` in `worktree` with
    /// `env`, watching output for every `log_line` pattern of `probes` from
    /// the first line on.
    pub fn new(
        worktree: impl Into<PathBuf>,
        env: Vec<(OsString, OsString)>,
        probes: &ProbeSet,
        started_at: Instant,
    ) -> Self {
        let watches = probes
            .log_line_patterns()
            .into_iter()
            .map(|pattern| LineWatch { pattern: pattern.regex().clone(), first_match: None })
            .collect();
        AgentObservations {
            worktree: worktree.into(),
            env,
            allow_remote_hosts: false,
            exec_prefix: Vec::new(),
            seen: Mutex::new(Seen { watches, events: HashSet::new(), last_activity: started_at }),
        }
    }

    /// Lets `http_get` and `tcp_socket` probes reach non-loopback hosts.
    pub fn with_remote_hosts_allowed(mut self, allowed: bool) -> Self {
        self.allow_remote_hosts = allowed;
        self
    }

    /// Runs every `exec` command after `prefix` (see
    /// [`ProbeContext::exec_prefix`]).
    pub fn with_exec_prefix(mut self, prefix: Vec<String>) -> Self {
        self.exec_prefix = prefix;
        self
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One line of the agent's output, seen at `at` (output is activity).
    /// A trailing `\n` or `\r\n` is ignored; the supervisor strips terminal
    /// escapes if it wants patterns to see plain text.
    pub fn record_line(&self, line: &str, at: Instant) {
        let line = line.trim_end_matches(['\n', '\r']);
        let mut seen = self.seen();
        for watch in seen.watches.iter_mut().filter(|w| w.first_match.is_none()) {
            if watch.pattern.is_match(line) {
                watch.first_match = Some(line.to_owned());
            }
        }
        seen.last_activity = seen.last_activity.max(at);
    }

    /// A harness event named `name` (such as `init`), seen at `at` (harness
    /// events are progress, so this is activity too).
    pub fn record_event(&self, name: &str, at: Instant) {
        let mut seen = self.seen();
        if !seen.events.contains(name) {
            seen.events.insert(name.to_owned());
        }
        seen.last_activity = seen.last_activity.max(at);
    }

    /// Any other sign of progress at `at`.
    pub fn record_activity(&self, at: Instant) {
        let mut seen = self.seen();
        seen.last_activity = seen.last_activity.max(at);
    }
}

impl ProbeContext for AgentObservations {
    fn worktree(&self) -> &Path {
        &self.worktree
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        self.env.clone()
    }

    fn exec_prefix(&self) -> Vec<String> {
        self.exec_prefix.clone()
    }

    /// Patterns given to [`AgentObservations::new`] see every line. Any
    /// other pattern starts being watched on its first call and sees only
    /// the lines recorded after it.
    fn first_line_matching(&self, pattern: &Regex) -> Option<String> {
        let mut seen = self.seen();
        match seen.watches.iter().find(|watch| watch.pattern.as_str() == pattern.as_str()) {
            Some(watch) => watch.first_match.clone(),
            None => {
                seen.watches.push(LineWatch { pattern: pattern.clone(), first_match: None });
                None
            }
        }
    }

    fn has_seen_event(&self, name: &str) -> bool {
        self.seen().events.contains(name)
    }

    fn last_activity(&self) -> Instant {
        self.seen().last_activity
    }

    fn allow_remote_hosts(&self) -> bool {
        self.allow_remote_hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Pattern, ProbeKind, ProbeSpec};
    use std::time::Duration;

    fn watching(pattern: &str) -> AgentObservations {
        let set = ProbeSet {
            startup: Some(ProbeSpec::new(ProbeKind::LogLine(Pattern::new(pattern).unwrap()))),
            ..ProbeSet::default()
        };
        AgentObservations::new("/tmp", vec![], &set, Instant::now())
    }

    #[test]
    fn a_watched_pattern_keeps_its_first_matching_line() {
        let observations = watching(r"listening on (\d+)");
        let re = Regex::new(r"listening on (\d+)").unwrap();
        let now = Instant::now();
        observations.record_line("starting\n", now);
        assert_eq!(observations.first_line_matching(&re), None);
        observations.record_line("listening on 8080\r\n", now);
        observations.record_line("listening on 9090", now);
        assert_eq!(observations.first_line_matching(&re).as_deref(), Some("listening on 8080"));
    }

    #[test]
    fn an_unwatched_pattern_sees_only_later_lines() {
        let observations = watching("x");
        let re = Regex::new("late").unwrap();
        observations.record_line("late but unwatched", Instant::now());
        assert_eq!(observations.first_line_matching(&re), None);
        observations.record_line("late and watched", Instant::now());
        assert_eq!(observations.first_line_matching(&re).as_deref(), Some("late and watched"));
    }

    #[test]
    fn events_and_lines_are_activity_and_it_never_goes_back() {
        let start = Instant::now();
        let observations = AgentObservations::new("/tmp", vec![], &ProbeSet::default(), start);
        assert_eq!(observations.last_activity(), start);
        assert!(!observations.has_seen_event("init"));
        observations.record_event("init", start + Duration::from_secs(2));
        assert!(observations.has_seen_event("init"));
        assert_eq!(observations.last_activity(), start + Duration::from_secs(2));
        observations.record_line("x", start + Duration::from_secs(5));
        assert_eq!(observations.last_activity(), start + Duration::from_secs(5));
        observations.record_activity(start + Duration::from_secs(3));
        assert_eq!(observations.last_activity(), start + Duration::from_secs(5));
        assert!(!observations.allow_remote_hosts());
        assert!(observations.with_remote_hosts_allowed(true).allow_remote_hosts());
    }
}
