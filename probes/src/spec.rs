//! Probe specs: what `corral.toml` says about a probe, parsed and checked.
//!
//! This module owns the serde shape of probes and their validation. A
//! [`ProbeSpec`] that came out of serde is valid: every number is finite and
//! in range, exactly one kind is given, a `log_line` regex compiles. A
//! [`ProbeSet`] that came out of serde also has `success_threshold = 1` for
//! its startup and liveness probes, as in Kubernetes. Specs built in code are
//! checked by [`ProbeSpec::validate`] and [`ProbeSet::validate`] (the
//! tracker calls the latter). Every error names the field it is about.
//!
//! # Shape
//!
//! A probe is one table holding exactly one kind key and any of the
//! Kubernetes timing fields (seconds may be fractional):
//!
//! ```toml
//! [agents.api]
//! startup = { exec = { command = ["test", "-f", "target/.built"] }, period_seconds = 2, failure_threshold = 30 }
//! readiness = { event = "init" }
//! liveness = { idle = { seconds = 300 }, period_seconds = 15, failure_threshold = 1 }
//!
//! [agents.web.liveness]
//! http_get = { port = 8080, path = "/healthz" }   # host defaults to 127.0.0.1
//! initial_delay_seconds = 5
//! period_seconds = 10        # default 10
//! timeout_seconds = 1        # default 1
//! success_threshold = 1      # default 1; must be 1 for startup and liveness
//! failure_threshold = 3      # default 3
//! ```
//!
//! The kinds: `exec = { command = [..] }`, `http_get = { port, path = "/",
//! host = "127.0.0.1", http_headers = [{ name, value }], allow_remote =
//! false }`, `tcp_socket = { port, host = "127.0.0.1", allow_remote = false
//! }`, `log_line = "regex"`, `file_exists = "path/relative/to/worktree"`,
//! `event = "harness event name"`, `idle = { seconds = N }`.
//!
//! The `host` of `http_get` and `tcp_socket` must be loopback (an address
//! in 127.0.0.0/8, `::1`, `localhost` or a name under `.localhost`) unless
//! the probe says `allow_remote = true`: validation refuses any other host,
//! so such a probe is refused when the agent is spawned rather than failing
//! at every period. At run time the resolved addresses are checked again.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Kubernetes' default `initial_delay_seconds`.
pub const DEFAULT_INITIAL_DELAY_SECONDS: f64 = 0.0;
/// Kubernetes' default `period_seconds`.
pub const DEFAULT_PERIOD_SECONDS: f64 = 10.0;
/// Kubernetes' default `timeout_seconds`.
pub const DEFAULT_TIMEOUT_SECONDS: f64 = 1.0;
/// Kubernetes' default `success_threshold`.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// Kubernetes' default `failure_threshold`.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// The host `http_get` and `tcp_socket` probes use when none is given.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The largest number of seconds any field takes (about 31 years): keeps
/// every `Instant + Duration` the tracker computes from overflowing.
const MAX_SECONDS: f64 = 1e9;

/// A spec that does not hold. `field` is the key as written in
/// `corral.toml` (prefixed with `startup.`, `readiness.` or `liveness.` when
/// the error comes from a [`ProbeSet`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The offending key, e.g. `period_seconds` or `liveness.success_threshold`.
    pub field: String,
    /// What is wrong with it, including the value found.
    pub problem: String,
}

impl SpecError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        SpecError { field: field.into(), problem: problem.into() }
    }

    fn within(mut self, probe: &str) -> Self {
        self.field = format!("{probe}.{}", self.field);
        self
    }
}

/// One probe: what to check and how often, with Kubernetes names and
/// defaults. See the module documentation for the serde shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawProbeSpec", into = "RawProbeSpec")]
pub struct ProbeSpec {
    /// What the probe checks.
    pub kind: ProbeKind,
    /// Seconds from the agent's start before the first run.
    pub initial_delay_seconds: f64,
    /// Seconds between runs.
    pub period_seconds: f64,
    /// Seconds a run may take; a longer run counts as a failure.
    pub timeout_seconds: f64,
    /// Consecutive successes that make a failing probe pass (readiness only;
    /// 1 for startup and liveness).
    pub success_threshold: u32,
    /// Consecutive failures that make a passing probe fail.
    pub failure_threshold: u32,
}

impl ProbeSpec {
    /// A spec of `kind` with the Kubernetes defaults for every number.
    pub fn new(kind: ProbeKind) -> Self {
        ProbeSpec {
            kind,
            initial_delay_seconds: DEFAULT_INITIAL_DELAY_SECONDS,
            period_seconds: DEFAULT_PERIOD_SECONDS,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_seconds("initial_delay_seconds", self.initial_delay_seconds, true)?;
        check_seconds("period_seconds", self.period_seconds, false)?;
        check_seconds("timeout_seconds", self.timeout_seconds, false)?;
        if self.success_threshold < 1 {
            return Err(SpecError::new(
                "success_threshold",
                format!("must be at least 1, got {}", self.success_threshold),
            ));
        }
        if self.failure_threshold < 1 {
            return Err(SpecError::new(
                "failure_threshold",
                format!("must be at least 1, got {}", self.failure_threshold),
            ));
        }
        self.kind.validate()
    }

    /// `initial_delay_seconds` as a duration (the spec must be valid).
    pub fn initial_delay(&self) -> Duration {
        Duration::from_secs_f64(self.initial_delay_seconds)
    }

    /// `period_seconds` as a duration (the spec must be valid).
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(self.period_seconds)
    }

    /// `timeout_seconds` as a duration (the spec must be valid).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }
}

fn check_seconds(field: &str, value: f64, zero_allowed: bool) -> Result<(), SpecError> {
    let ok = value.is_finite() && value <= MAX_SECONDS && if zero_allowed { value >= 0.0 } else { value > 0.0 };
    if ok {
        Ok(())
    } else {
        let requirement = if zero_allowed { "0 or more" } else { "greater than 0" };
        Err(SpecError::new(
            field,
            format!("must be a number of seconds {requirement} and at most {MAX_SECONDS}, got {value}"),
        ))
    }
}

/// What a probe checks. Serialized as a single-key table, the key being the
/// kind's snake_case name, e.g. `{ event = "init" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Run a command in the agent's worktree with the agent's environment;
    /// exit status 0 passes.
    Exec(ExecAction),
    /// HTTP/1.1 GET; a status from 200 to 399 passes.
    HttpGet(HttpGetAction),
    /// A TCP connection that opens passes.
    TcpSocket(TcpSocketAction),
    /// Passes once any output line since the agent started matches the regex.
    LogLine(Pattern),
    /// Passes while this path, relative to the worktree, exists.
    FileExists(PathBuf),
    /// Passes once the harness has reported an event of this name since the
    /// agent started (for example `init`).
    Event(String),
    /// Fails once the agent has shown no output or progress for this long.
    Idle(IdleAction),
}

impl ProbeKind {
    /// The kind's name as written in `corral.toml`.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Exec(_) => "exec",
            ProbeKind::HttpGet(_) => "http_get",
            ProbeKind::TcpSocket(_) => "tcp_socket",
            ProbeKind::LogLine(_) => "log_line",
            ProbeKind::FileExists(_) => "file_exists",
            ProbeKind::Event(_) => "event",
            ProbeKind::Idle(_) => "idle",
        }
    }

    /// Checks the kind's own fields; the error names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            ProbeKind::Exec(exec) => match exec.command.first() {
                None => Err(SpecError::new("exec.command", "must name a program, got []")),
                Some(program) if program.is_empty() => {
                    Err(SpecError::new("exec.command", "the program (first element) must not be empty"))
                }
                Some(_) => Ok(()),
            },
            ProbeKind::HttpGet(http) => {
                check_port("http_get.port", http.port)?;
                check_host("http_get.host", &http.host, http.allow_remote)?;
                if !http.path.starts_with('/') || http.path.chars().any(is_space_or_control) {
                    return Err(SpecError::new(
                        "http_get.path",
                        format!("must start with / and hold no spaces or control characters, got {:?}", http.path),
                    ));
                }
                for header in &http.http_headers {
                    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
                    if header.name.is_empty() || !header.name.chars().all(token) {
                        return Err(SpecError::new(
                            "http_get.http_headers.name",
                            format!("must be an HTTP header name, got {:?}", header.name),
                        ));
                    }
                    if header.value.chars().any(|c| c == '\r' || c == '\n') {
                        return Err(SpecError::new(
                            "http_get.http_headers.value",
                            format!("must be one line, got {:?}", header.value),
                        ));
                    }
                }
                Ok(())
            }
            ProbeKind::TcpSocket(tcp) => {
                check_port("tcp_socket.port", tcp.port)?;
                check_host("tcp_socket.host", &tcp.host, tcp.allow_remote)
            }
            // The regex compiled when the Pattern was made.
            ProbeKind::LogLine(_) => Ok(()),
            ProbeKind::FileExists(path) => {
                if path.as_os_str().is_empty() || path.is_absolute() {
                    Err(SpecError::new(
                        "file_exists",
                        format!("must be a path relative to the worktree, got {:?}", path.display().to_string()),
                    ))
                } else {
                    Ok(())
                }
            }
            ProbeKind::Event(name) => {
                if name.is_empty() {
                    Err(SpecError::new("event", "must name a harness event, got \"\""))
                } else {
                    Ok(())
                }
            }
            ProbeKind::Idle(idle) => check_seconds("idle.seconds", idle.seconds, false),
        }
    }
}

fn is_space_or_control(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

fn check_port(field: &str, port: u16) -> Result<(), SpecError> {
    if port == 0 {
        Err(SpecError::new(field, "must be a port from 1 to 65535, got 0"))
    } else {
        Ok(())
    }
}

fn check_host(field: &str, host: &str, allow_remote: bool) -> Result<(), SpecError> {
    if host.is_empty() || host.chars().any(|c| is_space_or_control(c) || c == '/') {
        Err(SpecError::new(field, format!("must be a host name or IP address, got {host:?}")))
    } else if !allow_remote && !is_loopback_host(host) {
        Err(SpecError::new(
            field,
            format!(
                "{host:?} is not a loopback host (127.0.0.0/8, ::1, localhost); probes reach only loopback \
                 hosts unless the probe says allow_remote = true"
            ),
        ))
    } else {
        Ok(())
    }
}

/// Whether `host` is loopback without resolving it: a loopback address
/// (127.0.0.0/8, `::1`, their IPv4-mapped forms, with or without
/// brackets), `localhost` or a name under `.localhost` (RFC 6761). Names
/// are checked again once resolved, at run time.
pub fn is_loopback_host(host: &str) -> bool {
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        return ip.to_canonical().is_loopback();
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// `exec = { command = ["program", "arg", ...] }`: no shell is involved;
/// write `["sh", "-c", "..."]` for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// `http_get = { port = 8080, path = "/healthz", host = "127.0.0.1" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGetAction {
    /// TCP port.
    pub port: u16,
    /// Request path, `/` when not given.
    #[serde(default = "default_path")]
    pub path: String,
    /// Host name or IP address, `127.0.0.1` when not given. It must be
    /// loopback (see [`is_loopback_host`]) unless `allow_remote` is set.
    #[serde(default = "default_host")]
    pub host: String,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
    /// `allow_remote = true` lets `host` be other than loopback; false when
    /// not given.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_remote: bool,
}

/// One `{ name = "...", value = "..." }` request header of an `http_get` probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// `tcp_socket = { port = 5432, host = "127.0.0.1" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocketAction {
    /// TCP port.
    pub port: u16,
    /// Host name or IP address, `127.0.0.1` when not given. It must be
    /// loopback (see [`is_loopback_host`]) unless `allow_remote` is set.
    #[serde(default = "default_host")]
    pub host: String,
    /// `allow_remote = true` lets `host` be other than loopback; false when
    /// not given.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_remote: bool,
}

/// `idle = { seconds = 300 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleAction {
    /// Seconds without output or progress after which the probe fails.
    pub seconds: f64,
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_host() -> String {
    DEFAULT_HOST.to_owned()
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A compiled `log_line` regex; serialized as its source text.
#[derive(Clone)]
pub struct Pattern(Regex);

impl Pattern {
    /// Compiles `source`; the error message names the `log_line` field.
    pub fn new(source: &str) -> Result<Self, SpecError> {
        Regex::new(source)
            .map(Pattern)
            .map_err(|err| SpecError::new("log_line", format!("invalid regex {source:?}: {err}")))
    }

    /// The compiled regex.
    pub fn regex(&self) -> &Regex {
        &self.0
    }

    /// The regex as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.as_str())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// The on-disk shape of a [`ProbeSpec`]: every kind as an optional key so
/// that unknown keys and a missing or doubled kind get errors that name them.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_line: Option<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_exists: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle: Option<IdleAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_delay_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    period_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_seconds: Option<f64>,
    // Signed so that a negative threshold gets an error naming the field
    // rather than serde's bare "expected u32".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    success_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure_threshold: Option<i64>,
}

fn threshold(field: &str, value: Option<i64>, default: u32) -> Result<u32, SpecError> {
    match value {
        None => Ok(default),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| SpecError::new(field, format!("must be at least 1, got {n}"))),
    }
}

impl TryFrom<RawProbeSpec> for ProbeSpec {
    type Error = SpecError;

    fn try_from(raw: RawProbeSpec) -> Result<Self, SpecError> {
        let mut kinds = Vec::new();
        if let Some(exec) = raw.exec {
            kinds.push(ProbeKind::Exec(exec));
        }
        if let Some(http) = raw.http_get {
            kinds.push(ProbeKind::HttpGet(http));
        }
        if let Some(tcp) = raw.tcp_socket {
            kinds.push(ProbeKind::TcpSocket(tcp));
        }
        if let Some(pattern) = raw.log_line {
            kinds.push(ProbeKind::LogLine(pattern));
        }
        if let Some(path) = raw.file_exists {
            kinds.push(ProbeKind::FileExists(path));
        }
        if let Some(event) = raw.event {
            kinds.push(ProbeKind::Event(event));
        }
        if let Some(idle) = raw.idle {
            kinds.push(ProbeKind::Idle(idle));
        }
        const ONE_OF: &str = "exec, http_get, tcp_socket, log_line, file_exists, event, idle";
        if kinds.len() != 1 {
            let found: Vec<&str> = kinds.iter().map(ProbeKind::name).collect();
            let found = if found.is_empty() { "none".to_owned() } else { found.join(" and ") };
            return Err(SpecError::new("kind", format!("a probe needs exactly one of {ONE_OF}; found {found}")));
        }
        let spec = ProbeSpec {
            kind: kinds.remove(0),
            initial_delay_seconds: raw.initial_delay_seconds.unwrap_or(DEFAULT_INITIAL_DELAY_SECONDS),
            period_seconds: raw.period_seconds.unwrap_or(DEFAULT_PERIOD_SECONDS),
            timeout_seconds: raw.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
            success_threshold: threshold("success_threshold", raw.success_threshold, DEFAULT_SUCCESS_THRESHOLD)?,
            failure_threshold: threshold("failure_threshold", raw.failure_threshold, DEFAULT_FAILURE_THRESHOLD)?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<ProbeSpec> for RawProbeSpec {
    fn from(spec: ProbeSpec) -> Self {
        let mut raw = RawProbeSpec {
            initial_delay_seconds: Some(spec.initial_delay_seconds),
            period_seconds: Some(spec.period_seconds),
            timeout_seconds: Some(spec.timeout_seconds),
            success_threshold: Some(spec.success_threshold.into()),
            failure_threshold: Some(spec.failure_threshold.into()),
            ..RawProbeSpec::default()
        };
        match spec.kind {
            ProbeKind::Exec(exec) => raw.exec = Some(exec),
            ProbeKind::HttpGet(http) => raw.http_get = Some(http),
            ProbeKind::TcpSocket(tcp) => raw.tcp_socket = Some(tcp),
            ProbeKind::LogLine(pattern) => raw.log_line = Some(pattern),
            ProbeKind::FileExists(path) => raw.file_exists = Some(path),
            ProbeKind::Event(event) => raw.event = Some(event),
            ProbeKind::Idle(idle) => raw.idle = Some(idle),
        }
        raw
    }
}

/// The three probes of one agent, each optional.
///
/// Deserializes from a table with `startup`, `readiness` and `liveness`
/// keys, and checks that `success_threshold` is 1 for startup and liveness.
/// It does not deny unknown keys, so a role struct could `#[serde(flatten)]`
/// it; but toml then reports errors at the role's table, not at the probe's
/// line. A role struct does better with three `Option<ProbeSpec>` fields of
/// its own (each error then names its line and key) and a call to
/// [`ProbeSet::validate`] on the set it builds from them
/// ([`ProbeTracker::new`](crate::ProbeTracker::new) validates too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawProbeSet")]
pub struct ProbeSet {
    /// Gates the others; failing `failure_threshold` times in a row kills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeSpec>,
    /// Marks the agent ready or not ready; never kills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
    /// Failing `failure_threshold` times in a row kills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
}

impl ProbeSet {
    /// Checks each probe, and that startup and liveness have
    /// `success_threshold = 1`. Field names in errors carry the probe's name,
    /// e.g. `liveness.success_threshold`.
    pub fn validate(&self) -> Result<(), SpecError> {
        for (name, spec) in [("startup", &self.startup), ("readiness", &self.readiness), ("liveness", &self.liveness)] {
            let Some(spec) = spec else { continue };
            spec.validate().map_err(|err| err.within(name))?;
            if name != "readiness" && spec.success_threshold != 1 {
                return Err(SpecError::new(
                    "success_threshold",
                    format!("must be 1 for {name} probes (as in Kubernetes), got {}", spec.success_threshold),
                )
                .within(name));
            }
        }
        Ok(())
    }

    /// True when no probe is configured.
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.readiness.is_none() && self.liveness.is_none()
    }

    /// Every `log_line` pattern in the set, for contexts that match output
    /// lines as they arrive (see `AgentObservations`).
    pub fn log_line_patterns(&self) -> Vec<&Pattern> {
        [&self.startup, &self.readiness, &self.liveness]
            .into_iter()
            .flatten()
            .filter_map(|spec| match &spec.kind {
                ProbeKind::LogLine(pattern) => Some(pattern),
                _ => None,
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct RawProbeSet {
    #[serde(default)]
    startup: Option<ProbeSpec>,
    #[serde(default)]
    readiness: Option<ProbeSpec>,
    #[serde(default)]
    liveness: Option<ProbeSpec>,
}

impl TryFrom<RawProbeSet> for ProbeSet {
    type Error = SpecError;

    fn try_from(raw: RawProbeSet) -> Result<Self, SpecError> {
        let set = ProbeSet { startup: raw.startup, readiness: raw.readiness, liveness: raw.liveness };
        set.validate()?;
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> Result<ProbeSpec, String> {
        toml::from_str::<ProbeSpec>(toml_text).map_err(|err| err.to_string())
    }

    fn set(toml_text: &str) -> Result<ProbeSet, String> {
        toml::from_str::<ProbeSet>(toml_text).map_err(|err| err.to_string())
    }

    #[test]
    fn event_probe_gets_kubernetes_defaults() {
        let parsed = spec(r#"event = "init""#).unwrap();
        assert_eq!(parsed, ProbeSpec::new(ProbeKind::Event("init".into())));
        assert_eq!(parsed.initial_delay_seconds, 0.0);
        assert_eq!(parsed.period_seconds, 10.0);
        assert_eq!(parsed.timeout_seconds, 1.0);
        assert_eq!(parsed.success_threshold, 1);
        assert_eq!(parsed.failure_threshold, 3);
    }

    #[test]
    fn every_kind_parses_from_toml() {
        let exec = spec(r#"exec = { command = ["test", "-f", "x"] }"#).unwrap();
        assert_eq!(exec.kind, ProbeKind::Exec(ExecAction { command: vec!["test".into(), "-f".into(), "x".into()] }));

        let http = spec(r#"http_get = { port = 8080, path = "/healthz" }"#).unwrap();
        assert_eq!(
            http.kind,
            ProbeKind::HttpGet(HttpGetAction {
                port: 8080,
                path: "/healthz".into(),
                host: "127.0.0.1".into(),
                http_headers: vec![],
                allow_remote: false,
            })
        );
        let http =
            spec(r#"http_get = { port = 80, host = "localhost", http_headers = [{ name = "X-Probe", value = "1" }] }"#)
                .unwrap();
        let ProbeKind::HttpGet(http) = http.kind else { panic!("not http_get") };
        assert_eq!(http.path, "/");
        assert_eq!(http.host, "localhost");
        assert_eq!(http.http_headers[0].name, "X-Probe");

        let tcp = spec("tcp_socket = { port = 5432 }").unwrap();
        assert_eq!(
            tcp.kind,
            ProbeKind::TcpSocket(TcpSocketAction { port: 5432, host: "127.0.0.1".into(), allow_remote: false })
        );

        let log = spec(r#"log_line = "listening on \\d+""#).unwrap();
        let ProbeKind::LogLine(pattern) = &log.kind else { panic!("not log_line") };
        assert!(pattern.regex().is_match("listening on 8080"));

        let file = spec(r#"file_exists = "target/.built""#).unwrap();
        assert_eq!(file.kind, ProbeKind::FileExists("target/.built".into()));

        let idle = spec("idle = { seconds = 300 }").unwrap();
        assert_eq!(idle.kind, ProbeKind::Idle(IdleAction { seconds: 300.0 }));
    }

    #[test]
    fn fractional_and_integer_seconds_are_both_accepted() {
        let parsed = spec(
            r#"
            event = "init"
            initial_delay_seconds = 2
            period_seconds = 0.05
            timeout_seconds = 0.2
            success_threshold = 2
            failure_threshold = 5
            "#,
        )
        .unwrap();
        assert_eq!(parsed.initial_delay_seconds, 2.0);
        assert_eq!(parsed.period(), Duration::from_millis(50));
        assert_eq!(parsed.timeout(), Duration::from_millis(200));
        assert_eq!(parsed.success_threshold, 2);
        assert_eq!(parsed.failure_threshold, 5);
    }

    #[test]
    fn a_role_in_corral_toml_reads_as_in_the_design() {
        #[derive(Deserialize)]
        struct Role {
            #[allow(dead_code)]
            harness: String,
            #[serde(flatten)]
            probes: ProbeSet,
        }
        #[derive(Deserialize)]
        struct Config {
            agents: std::collections::BTreeMap<String, Role>,
        }
        let config: Config = toml::from_str(
            r#"
            [agents.reviewer]
            harness = "claude"
            readiness = { event = "init" }

            [agents.api]
            harness = "codex"
            startup = { exec = { command = ["test", "-f", "target/.built"] }, period_seconds = 2, failure_threshold = 30 }
            liveness = { idle = { seconds = 300 }, period_seconds = 15, failure_threshold = 1 }
            "#,
        )
        .unwrap();
        let reviewer = &config.agents["reviewer"].probes;
        assert_eq!(reviewer.readiness.as_ref().unwrap().kind, ProbeKind::Event("init".into()));
        assert!(reviewer.startup.is_none() && reviewer.liveness.is_none());
        let api = &config.agents["api"].probes;
        assert_eq!(api.startup.as_ref().unwrap().failure_threshold, 30);
        assert_eq!(api.liveness.as_ref().unwrap().period_seconds, 15.0);
    }

    #[test]
    fn a_bad_probe_in_a_role_is_reported_at_its_line_and_key() {
        // The shape recommended to the supervisor: the three probes as
        // fields of the role, so toml can point at the line.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Role {
            harness: String,
            startup: Option<ProbeSpec>,
            readiness: Option<ProbeSpec>,
            liveness: Option<ProbeSpec>,
        }
        let text = "[agents.x]\nharness = \"claude\"\nliveness = { event = \"init\", perod_seconds = 5 }\n";
        let err = toml::from_str::<std::collections::BTreeMap<String, std::collections::BTreeMap<String, Role>>>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 30"), "{err}");
        assert!(err.contains("unknown field `perod_seconds`"), "{err}");
        let text = "[agents.x]\nharness = \"claude\"\nreadiness = { event = \"init\", period_seconds = -1 }\n";
        let err = toml::from_str::<std::collections::BTreeMap<String, std::collections::BTreeMap<String, Role>>>(text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("period_seconds: must be"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"event = "init"
                period_seconds = 0"#,
                "period_seconds",
            ),
            (
                r#"event = "init"
                initial_delay_seconds = -1"#,
                "initial_delay_seconds",
            ),
            (
                r#"event = "init"
                timeout_seconds = -0.5"#,
                "timeout_seconds",
            ),
            (
                r#"event = "init"
                failure_threshold = 0"#,
                "failure_threshold",
            ),
            (
                r#"event = "init"
                success_threshold = -2"#,
                "success_threshold",
            ),
            (
                r#"event = "init"
                perod_seconds = 5"#,
                "perod_seconds",
            ),
            (r#"log_line = "(unclosed""#, "log_line"),
            (r#"file_exists = "/etc/passwd""#, "file_exists"),
            (r#"exec = { command = [] }"#, "exec.command"),
            (r#"http_get = { port = 0 }"#, "http_get.port"),
            (r#"http_get = { port = 80, path = "healthz" }"#, "http_get.path"),
            (r#"http_get = { port = 80, path = "/a b" }"#, "http_get.path"),
            (r#"tcp_socket = { port = 80, host = "" }"#, "tcp_socket.host"),
            (r#"idle = { seconds = 0 }"#, "idle.seconds"),
            (r#"period_seconds = 5"#, "exactly one of"),
            (
                r#"event = "init"
                log_line = "ready""#,
                "found log_line and event",
            ),
        ];
        for (text, field) in cases {
            let err = spec(text).expect_err(text);
            assert!(err.contains(field), "{text:?} gave {err:?}, which does not name {field}");
        }
    }

    #[test]
    fn a_probe_host_that_is_not_loopback_is_refused_at_validation_unless_allowed() {
        for host in ["192.0.2.1", "10.0.0.1", "0.0.0.0", "::", "[2001:db8::1]", "example.com", "localhost.example"] {
            for kind in ["http_get", "tcp_socket"] {
                let text = format!(r#"{kind} = {{ port = 80, host = "{host}" }}"#);
                let err = spec(&text).expect_err(&text);
                assert!(err.contains(&format!("{kind}.host")), "{text}: {err}");
                assert!(err.contains(host) && err.contains("not a loopback host"), "{text}: {err}");
                assert!(err.contains("allow_remote = true"), "{text}: {err}");
                let allowed = spec(&format!(r#"{kind} = {{ port = 80, host = "{host}", allow_remote = true }}"#));
                assert!(allowed.is_ok(), "{host}: {allowed:?}");
            }
        }
        for host in
            ["127.0.0.1", "127.9.8.7", "::1", "[::1]", "::ffff:127.0.0.1", "localhost", "LocalHost.", "api.localhost"]
        {
            assert!(spec(&format!(r#"tcp_socket = {{ port = 80, host = "{host}" }}"#)).is_ok(), "{host}");
        }
        // The default host is loopback, and allow_remote defaults to false.
        let ProbeKind::HttpGet(http) = spec("http_get = { port = 80 }").unwrap().kind else { panic!("not http_get") };
        assert!(!http.allow_remote);

        // A set built in code names the probe and the host, as the daemon
        // reports it at spawn.
        let set = ProbeSet {
            liveness: Some(ProbeSpec::new(ProbeKind::TcpSocket(TcpSocketAction {
                port: 5432,
                host: "192.0.2.1".into(),
                allow_remote: false,
            }))),
            ..ProbeSet::default()
        };
        let err = set.validate().unwrap_err();
        assert_eq!(err.field, "liveness.tcp_socket.host");
        assert!(err.to_string().contains("\"192.0.2.1\" is not a loopback host"), "{err}");

        // allow_remote survives a round trip, and is left out when false.
        let remote = spec(r#"http_get = { port = 80, host = "192.0.2.1", allow_remote = true }"#).unwrap();
        let json = serde_json::to_string(&remote).unwrap();
        assert_eq!(serde_json::from_str::<ProbeSpec>(&json).unwrap(), remote);
        assert!(!serde_json::to_string(&spec("http_get = { port = 80 }").unwrap()).unwrap().contains("allow_remote"));
    }

    #[test]
    fn startup_and_liveness_need_success_threshold_one() {
        let err = set(r#"liveness = { event = "init", success_threshold = 2 }"#).unwrap_err();
        assert!(err.contains("liveness.success_threshold"), "{err}");
        let err = set(r#"startup = { event = "init", success_threshold = 3 }"#).unwrap_err();
        assert!(err.contains("startup.success_threshold"), "{err}");
        let readiness = set(r#"readiness = { event = "init", success_threshold = 3 }"#).unwrap();
        assert_eq!(readiness.readiness.unwrap().success_threshold, 3);

        let built_in_code = ProbeSet {
            liveness: Some(ProbeSpec { success_threshold: 2, ..ProbeSpec::new(ProbeKind::Event("init".into())) }),
            ..ProbeSet::default()
        };
        let err = built_in_code.validate().unwrap_err();
        assert_eq!(err.field, "liveness.success_threshold");
    }

    #[test]
    fn nested_errors_carry_the_probe_name() {
        let set = ProbeSet {
            readiness: Some(ProbeSpec { period_seconds: f64::NAN, ..ProbeSpec::new(ProbeKind::Event("init".into())) }),
            ..ProbeSet::default()
        };
        assert_eq!(set.validate().unwrap_err().field, "readiness.period_seconds");
    }

    #[test]
    fn specs_round_trip_through_json_and_toml() {
        let original: ProbeSet = toml::from_str(
            r#"
            startup = { log_line = "^ready$", period_seconds = 0.5 }
            readiness = { http_get = { port = 8080, path = "/ready" }, success_threshold = 2 }
            liveness = { exec = { command = ["true"] }, timeout_seconds = 3 }
            "#,
        )
        .unwrap();
        let json = serde_json::to_string(&original).unwrap();
        assert_eq!(serde_json::from_str::<ProbeSet>(&json).unwrap(), original);
        let text = toml::to_string(&original).unwrap();
        assert_eq!(toml::from_str::<ProbeSet>(&text).unwrap(), original);
        assert_eq!(original.log_line_patterns().len(), 1);
    }
}
