//! Configuration: `corral.toml` at the repository root and the user's
//! `config.toml`, parsed, checked, layered and resolved for one agent.
//!
//! This module owns the file format and its error messages. It reads files
//! and nothing else: it starts no process, touches no git state and applies
//! nothing. The supervisor asks [`Config::resolve`] for the settings of an
//! agent and lays the command line's flags on top with
//! [`AgentConfig::overlay`].
//!
//! # Files and layers
//!
//! Two files are read, both optional:
//!
//! 1. the user file, `$XDG_CONFIG_HOME/corral/config.toml` (by default
//!    `~/.config/corral/config.toml`; see [`user_config_path`]);
//! 2. the repository file, `corral.toml` at the repository root.
//!
//! The repository file overrides the user file key by key: tables merge, so
//! a role (or a policy, or `[defaults]`) defined in both keeps the user's
//! fields the repository does not set. Inside an agent table, `budget`,
//! `restart`, `merge` and `env` merge field by field too; `args`, `gate`
//! and each probe are replaced whole, and so is a model's `[prices]` entry.
//! Command-line flags override both (the supervisor's job).
//!
//! Every table is closed: an unknown key is an error, never ignored. Each
//! file is checked on its own, and every error names the file, the line and
//! column, and the key path:
//!
//! ```text
//! corral.toml:12:1: agents.reviewer.budget: unknown key "tokns" (expected one of: tokens, output_tokens, cost, wall, idle, warn_at)
//! corral.toml:7:15: supervisor.max_threads: expected a positive integer, found a string
//! corral.toml:9:14: budget.daily_cost: must be greater than 0, found -3
//! corral.toml:20:48: agents.reviewer.readiness.period_seconds: must be a number of seconds greater than 0 and at most 1000000000, got 0
//! ```
//!
//! # Resolving an agent
//!
//! [`Config::resolve`] builds the settings of the agent at an address from,
//! in order, each later layer winning field by field: `[defaults]`, then
//! every `[policy."PREFIX"]` whose prefix covers the address (segment-wise:
//! `/root/review` covers `/root/review` and `/root/review/x`, not
//! `/root/reviewer`), outer prefixes before inner ones, then the role
//! `[agents.NAME]` if one is asked for. The result is an [`AgentConfig`]
//! whose unset fields mean "the supervisor's default". Limits that a child
//! must not exceed (its parent's sandbox and remaining budget) are enforced
//! by the supervisor at spawn, not here.
//!
//! # Shape
//!
//! ```toml
//! [supervisor]
//! max_threads = 6          # agents running at once; more wait in Pending (unset: no limit)
//! max_depth = 2            # deepest address below /root: /root/a/b is depth 2 (unset: no limit)
//! target_branch = "main"   # default merge target (unset: the branch checked out at spawn)
//! worktree_root = "/srv/corral/worktrees"   # absolute; unset: $CORRAL_WORKTREE_ROOT or the XDG data dir
//! grace = "10s"            # default stop grace: SIGTERM, this long, then SIGKILL
//!
//! [budget]                 # repository-wide, per calendar day (local time)
//! daily_tokens = 5_000_000
//! daily_cost = 20.0        # USD
//! warn_at = 0.8            # fraction at which a budget_warning is emitted (default 0.8)
//!
//! [defaults]               # an agent table applied to every agent
//! budget = { tokens = 1_000_000, wall = "2h" }
//! restart = { policy = "Never" }
//!
//! [prices."claude-sonnet-4-5"]   # USD per million tokens, for CLIs that report no cost
//! input = 3.0
//! output = 15.0
//! cache_read = 0.30        # default: the input price
//! cache_write = 3.75       # default: the input price
//!
//! [agents.reviewer]        # a role: an agent table
//! description = "reviews diffs"
//! harness = "claude"       # claude | codex | gemini | opencode | aider | generic
//! model = "claude-sonnet-4-5"
//! reasoning_effort = "high"
//! args = ["--max-turns", "20"]
//! env = { RUST_LOG = "info" }
//! sandbox = "read-only"    # read-only | workspace-write | full
//! budget = { tokens = 400_000, output_tokens = 50_000, cost = 2.5, wall = "30m", idle = "5m", warn_at = 0.9 }
//! startup = { log_line = "ready", failure_threshold = 30 }
//! readiness = { event = "init" }
//! liveness = { idle = { seconds = 300 }, period_seconds = 30 }
//! restart = { policy = "OnFailure", limit = 3, backoff = "10s", max_backoff = "300s", reset_after = "10m" }
//! merge = { policy = "auto", target = "main", strategy = "squash", gate = "cargo test" }
//! task = "review the diff against main"
//!
//! [policy."/root/review"]  # an agent table for every agent at or below this address
//! sandbox = "read-only"
//! ```
//!
//! Details:
//!
//! - Durations are strings of one or more number-and-unit parts (`"250ms"`,
//!   `"30s"`, `"5m"`, `"1h30m"`, `"1.5h"`; units `ns`, `us`, `ms`, `s`, `m`,
//!   `h`, `d`) or plain non-negative numbers of seconds (`30`, `0.5`); see
//!   [`parse_duration`].
//! - Budgets (`tokens`, `output_tokens`, `cost`, `wall`, `idle`,
//!   `daily_tokens`, `daily_cost`) must be greater than 0; `warn_at` is in
//!   (0, 1]; `max_threads` and `max_depth` are at least 1.
//! - Probes are [`corral_probes::ProbeSpec`]s, with Kubernetes field names
//!   and defaults; startup and liveness probes need `success_threshold = 1`.
//! - `restart.policy` is spelled as in Kubernetes: `"Never"` (the default),
//!   `"OnFailure"`, `"Always"`. `limit` is the most restarts (unset: no
//!   limit); the back-off starts at `backoff` (10 s), doubles up to
//!   `max_backoff` (300 s), and starts over after `reset_after` (10 min) of
//!   running.
//! - `merge.policy` is `"auto"`, `"manual"` (the default) or `"never"`, and
//!   `merge = "auto"` is short for `merge = { policy = "auto" }`.
//!   `strategy` is `"ff-only"`, `"merge"` (the default), `"rebase"` or
//!   `"squash"`. `gate` is a string run with `sh -c`, or an array run as an
//!   argv, in the agent's worktree.
//! - Role names follow agent-name rules (letters, digits, `_`, `-`); policy
//!   keys are addresses (`/root`, `/root/review`, ...).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_harness::TokenUsage;
use corral_probes::{ProbeSet, ProbeSpec};
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::model::address::{validate_name, Address};

/// The repository's configuration file, at the repository root.
pub const REPO_FILE: &str = "corral.toml";

/// The user's configuration file, below the XDG config folder.
pub const USER_FILE: &str = "corral/config.toml";

/// First restart delay when `restart.backoff` is unset.
pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// Longest restart delay when `restart.max_backoff` is unset.
pub const DEFAULT_RESTART_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Running time after which the back-off starts over, when
/// `restart.reset_after` is unset.
pub const DEFAULT_RESTART_RESET_AFTER: Duration = Duration::from_secs(600);

pub use crate::model::duration::{format_duration, parse_duration, MAX_DURATION_SECS};

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The configuration of one repository: the user file and `corral.toml`
/// layered (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    /// `[supervisor]`: limits and defaults of the supervisor itself.
    pub supervisor: SupervisorConfig,
    /// `[budget]`: the repository-wide daily budget.
    pub budget: RepoBudget,
    /// `[defaults]`: applied to every agent.
    pub defaults: AgentConfig,
    /// `[agents.NAME]`: roles, by name.
    pub agents: BTreeMap<String, AgentConfig>,
    /// `[policy."PREFIX"]`: settings by address prefix, keyed by the prefix
    /// as written (a valid address such as `/root/review`).
    #[serde(rename = "policy")]
    pub policies: BTreeMap<String, AgentConfig>,
    /// `[prices."MODEL"]`: USD per million tokens, by model name.
    pub prices: BTreeMap<String, Price>,
    /// The files this configuration was read from, lowest precedence first.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
}

/// `[supervisor]`. Unset fields take the supervisor's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Agents running at once; more wait in Pending, in order. Unset: no limit.
    #[serde(default, deserialize_with = "de_positive_u32", skip_serializing_if = "Option::is_none")]
    pub max_threads: Option<u32>,
    /// Deepest address allowed below `/root` (`/root/a` is 1). Unset: no limit.
    #[serde(default, deserialize_with = "de_positive_u32", skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Default merge target. Unset: the branch checked out at spawn.
    #[serde(default, deserialize_with = "de_name", skip_serializing_if = "Option::is_none")]
    pub target_branch: Option<String>,
    /// Where worktrees live (absolute). Unset: `$CORRAL_WORKTREE_ROOT`, else
    /// the XDG data folder.
    #[serde(default, deserialize_with = "de_absolute_path", skip_serializing_if = "Option::is_none")]
    pub worktree_root: Option<PathBuf>,
    /// Default grace period of a stop (SIGTERM, this long, SIGKILL).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub grace: Option<Duration>,
}

/// `[budget]`: what the whole repository may spend per calendar day (local
/// time). Unset: no daily limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoBudget {
    /// Tokens (all four kinds added) per day.
    #[serde(default, deserialize_with = "de_positive_u64", skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    /// USD per day.
    #[serde(default, deserialize_with = "de_positive_f64", skip_serializing_if = "Option::is_none")]
    pub daily_cost: Option<f64>,
    /// Fraction of a daily limit at which a `budget_warning` is emitted;
    /// unset: 0.8.
    #[serde(default, deserialize_with = "de_fraction", skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<f64>,
}

/// The settings of an agent: `[defaults]`, a role (`[agents.NAME]`), a
/// policy (`[policy."PREFIX"]`), or the result of [`Config::resolve`].
/// Every field is optional so that layers can be laid on each other with
/// [`AgentConfig::overlay`]; unset means "the supervisor's default".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// What the role is for, for people and for orchestrating agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Which agent CLI: one of `corral_harness::launch::HARNESSES`.
    #[serde(default, deserialize_with = "de_harness", skip_serializing_if = "Option::is_none")]
    pub harness: Option<String>,
    /// The model, as the harness names it.
    #[serde(default, deserialize_with = "de_name", skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Reasoning effort as the harness spells it (e.g. `low`, `medium`, `high`).
    #[serde(default, deserialize_with = "de_name", skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Extra arguments for the harness's command line (replaced whole by a
    /// later layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment variables (merged by name with a later layer).
    #[serde(default, deserialize_with = "de_env", skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// What the agent may touch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    /// Spending limits (merged field by field with a later layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Startup probe: gates the others; failing it stops the agent.
    #[serde(default, deserialize_with = "de_startup_or_liveness", skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeSpec>,
    /// Readiness probe: marks the agent ready or not; never stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
    /// Liveness probe: failing it stops the agent, then the restart policy decides.
    #[serde(default, deserialize_with = "de_startup_or_liveness", skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    /// What happens when the agent ends (merged field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartConfig>,
    /// How the agent's work reaches the target branch (merged field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeConfig>,
    /// The task given when a spawn gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// An agent's spending limits; unset means no limit of that kind. Checked
/// against spend by `crate::model::budget`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Tokens, all four kinds added (input, output, cache read, cache write).
    #[serde(default, deserialize_with = "de_positive_u64", skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Output tokens alone.
    #[serde(default, deserialize_with = "de_positive_u64", skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// USD.
    #[serde(default, deserialize_with = "de_positive_f64", skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Time since the agent started.
    #[serde(default, deserialize_with = "de_positive_duration", skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "opt_duration::serialize")]
    pub wall: Option<Duration>,
    /// Time without output or progress.
    #[serde(default, deserialize_with = "de_positive_duration", skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "opt_duration::serialize")]
    pub idle: Option<Duration>,
    /// Fraction of a limit at which a `budget_warning` is emitted; unset: 0.8.
    #[serde(default, deserialize_with = "de_fraction", skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<f64>,
}

/// `sandbox = "read-only" | "workspace-write" | "full"`: what an agent may
/// write, least to most permissive (the one type the harnesses apply).
pub use corral_harness::launch::Sandbox;

/// `restart = { ... }`: Kubernetes' restart policy with a back-off. Unset
/// fields take the `DEFAULT_RESTART_*` constants; an unset `policy` is
/// [`RestartPolicy::Never`] and an unset `limit` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartPolicy>,
    /// Most restarts; then the agent stays ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// First delay before a restart; doubles each time.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
    /// Longest delay.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
    /// Running this long resets the delay (and the count toward nothing
    /// else: the restart count only grows).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<Duration>,
}

/// When an ended agent is started again, spelled as in Kubernetes
/// ("Never", "OnFailure", "Always"): the one type `restart` also uses.
pub use crate::model::restart::RestartPolicy;

/// `merge = { ... }` (or `merge = "auto"`): what happens to an agent's work
/// when its task succeeds. Unset: policy `manual`, strategy `merge`, target
/// `[supervisor] target_branch` or the branch checked out at spawn, no gate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<MergePolicy>,
    /// The branch to merge into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<MergeStrategy>,
    /// A command run in the worktree before merging; a non-zero exit stops
    /// the merge (GateFailed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

/// Whether an agent's work is merged by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergePolicy {
    /// Through the merge queue as soon as the task succeeds.
    Auto,
    /// Only on `corral merge ADDRESS`.
    #[default]
    Manual,
    /// Never; the branch is kept.
    Never,
}

/// How a branch lands on its target: "ff-only", "merge" (the default),
/// "rebase", "squash" (the one type `merge` also uses).
pub use crate::git::merge::Strategy as MergeStrategy;

/// A merge gate: `gate = "cargo test"` runs with `sh -c`; `gate = ["cargo",
/// "test"]` runs that argv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Gate {
    Shell(String),
    Argv(Vec<String>),
}

impl From<&Gate> for crate::git::merge::Gate {
    fn from(gate: &Gate) -> Self {
        match gate {
            Gate::Shell(text) => crate::git::merge::Gate::Shell(text.clone()),
            Gate::Argv(argv) => crate::git::merge::Gate::Argv(argv.clone()),
        }
    }
}

impl Gate {
    /// The argv to run: `["sh", "-c", text]` or the argv itself.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Gate::Shell(text) => vec!["sh".to_owned(), "-c".to_owned(), text.clone()],
            Gate::Argv(argv) => argv.clone(),
        }
    }
}

/// What a model costs, in USD per million tokens of each kind. Used for
/// harnesses that report token counts but no cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawPrice")]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Unset in the file: the input price (an over-estimate, on the safe side).
    pub cache_read: f64,
    /// Unset in the file: the input price.
    pub cache_write: f64,
}

impl Price {
    /// The cost of `usage`, in USD.
    pub fn cost(&self, usage: &TokenUsage) -> f64 {
        (usage.input as f64 * self.input
            + usage.output as f64 * self.output
            + usage.cache_read as f64 * self.cache_read
            + usage.cache_write as f64 * self.cache_write)
            / 1_000_000.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    #[serde(deserialize_with = "de_price")]
    input: f64,
    #[serde(deserialize_with = "de_price")]
    output: f64,
    #[serde(default, deserialize_with = "de_opt_price")]
    cache_read: Option<f64>,
    #[serde(default, deserialize_with = "de_opt_price")]
    cache_write: Option<f64>,
}

impl From<RawPrice> for Price {
    fn from(raw: RawPrice) -> Price {
        Price {
            input: raw.input,
            output: raw.output,
            cache_read: raw.cache_read.unwrap_or(raw.input),
            cache_write: raw.cache_write.unwrap_or(raw.input),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A file holds bad TOML, an unknown key, a wrong type or a bad value.
    /// `key` is the dotted key path (empty for a syntax error); `line` and
    /// `column` count from 1.
    #[error("{}:{line}:{column}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
    /// [`Config::resolve`] was asked for a role no file defines.
    #[error("unknown role {role:?} ({})", known_roles(known))]
    UnknownRole { role: String, known: Vec<String> },
    /// [`Config::resolve`] was given something that is not an address.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
}

fn known_roles(known: &[String]) -> String {
    if known.is_empty() {
        "no roles are defined: add an [agents.NAME] table to corral.toml".to_owned()
    } else {
        format!("known roles: {}", known.join(", "))
    }
}

// ---------------------------------------------------------------------------
// Loading, layering, resolving
// ---------------------------------------------------------------------------

impl Config {
    /// Reads the user file (if any) and `corral.toml` at `repo_root` (if
    /// any), the latter overriding the former. Missing files are fine.
    pub fn load(repo_root: &Path) -> Result<Config, ConfigError> {
        let mut files = Vec::new();
        files.extend(user_config_path());
        files.push(repo_root.join(REPO_FILE));
        Config::load_files(&files)
    }

    /// Reads each file that exists, in order, each overriding the ones
    /// before it.
    pub fn load_files(files: &[PathBuf]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for path in files {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ConfigError::Read { path: path.clone(), source }),
            };
            config.overlay(&Config::from_str(&text, path)?);
        }
        Ok(config)
    }

    /// Parses and checks one file's text; `path` is only used in errors and
    /// in [`Config::sources`].
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, key: String, message: String| {
            let (line, column) = span.map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Invalid { path: path.to_owned(), line, column, key, message }
        };
        // The outline only serves to name keys in errors; a file it cannot
        // read is a file the typed parse rejects too, with a position.
        let outline = toml::from_str::<Outline>(text).ok();
        let layer: Layer = toml::from_str(text).map_err(|err| {
            let mut message = humanize(&one_line(err.message(), outline.is_none()));
            let Some(span) = err.span() else { return invalid(None, String::new(), message) };
            let found = outline.as_ref().and_then(|outline| Some((outline, outline.path_at(span.start)?)));
            let Some((outline, hit)) = found else { return invalid(Some(span), String::new(), message) };
            let mut path = hit.path;
            let mut span = span;
            // A message that starts with a field ("period_seconds: must be ...",
            // from a probe) is moved onto that field when it lies below the
            // key, and loses the repetition when it is the key itself.
            if !hit.on_key {
                if let Some((field, rest)) = message.split_once(": ") {
                    let field: Vec<Segment> = field.split('.').map(|part| Segment::Key(part.to_owned())).collect();
                    let deeper = [path.as_slice(), field.as_slice()].concat();
                    if let Some(found) = outline.locate(&deeper).filter(|found| found.exact) {
                        path = deeper;
                        span = found.span;
                        message = rest.to_owned();
                    } else if path.ends_with(&field) {
                        message = rest.to_owned();
                    }
                }
            }
            invalid(Some(span), format_path(&path), message)
        })?;
        layer.check().map_err(|problem| {
            let path: Vec<Segment> = problem.path.into_iter().map(Segment::Key).collect();
            let span = outline.as_ref().and_then(|outline| outline.locate(&path)).map(|found| {
                if problem.on_key {
                    found.key_span
                } else {
                    found.span
                }
            });
            invalid(span, format_path(&path), problem.message)
        })?;
        Ok(Config {
            supervisor: layer.supervisor,
            budget: layer.budget,
            defaults: layer.defaults,
            agents: layer.agents,
            policies: layer.policies,
            prices: layer.prices,
            sources: vec![path.to_owned()],
        })
    }

    /// Lays `other` on top of `self`: every key `other` sets wins, tables
    /// merge (see the module documentation), and `other`'s sources are
    /// appended.
    pub fn overlay(&mut self, other: &Config) {
        let s = &mut self.supervisor;
        let o = &other.supervisor;
        set(&mut s.max_threads, &o.max_threads);
        set(&mut s.max_depth, &o.max_depth);
        set(&mut s.target_branch, &o.target_branch);
        set(&mut s.worktree_root, &o.worktree_root);
        set(&mut s.grace, &o.grace);
        set(&mut self.budget.daily_tokens, &other.budget.daily_tokens);
        set(&mut self.budget.daily_cost, &other.budget.daily_cost);
        set(&mut self.budget.warn_at, &other.budget.warn_at);
        self.defaults.overlay(&other.defaults);
        for (name, role) in &other.agents {
            self.agents.entry(name.clone()).or_default().overlay(role);
        }
        for (prefix, policy) in &other.policies {
            self.policies.entry(prefix.clone()).or_default().overlay(policy);
        }
        self.prices.extend(other.prices.iter().map(|(model, price)| (model.clone(), *price)));
        self.sources.extend(other.sources.iter().cloned());
    }

    /// The settings of the agent at `address` (absolute, e.g.
    /// `/root/review/dep`), optionally in `role`: `[defaults]`, then the
    /// policies covering the address from outer to inner, then the role.
    pub fn resolve(&self, address: &str, role: Option<&str>) -> Result<AgentConfig, ConfigError> {
        let address = Address::parse(address)
            .map_err(|err| ConfigError::InvalidAddress { address: address.to_owned(), reason: err.message })?;
        let role = match role {
            Some(name) => Some(self.agents.get(name).ok_or_else(|| ConfigError::UnknownRole {
                role: name.to_owned(),
                known: self.agents.keys().cloned().collect(),
            })?),
            None => None,
        };
        let mut policies: Vec<(Address, &AgentConfig)> = self
            .policies
            .iter()
            // Prefixes were checked when the file was read.
            .filter_map(|(prefix, policy)| Address::parse(prefix).ok().map(|prefix| (prefix, policy)))
            .filter(|(prefix, _)| address.is_within(prefix))
            .collect();
        policies.sort_by_key(|(prefix, _)| prefix.depth());
        let mut resolved = self.defaults.clone();
        for (_, policy) in policies {
            resolved.overlay(policy);
        }
        if let Some(role) = role {
            resolved.overlay(role);
        }
        Ok(resolved)
    }

    /// The price of `model`: its own `[prices]` entry, else the entry with
    /// the longest name that `model` extends with a `-`, `@` or `:` (so
    /// `claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929`).
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.prices.get(model) {
            return Some(price);
        }
        self.prices
            .iter()
            .filter(|(name, _)| model.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with(['-', '@', ':'])))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| price)
    }
}

impl AgentConfig {
    /// Lays `other` on top of `self`: each field `other` sets wins. `budget`,
    /// `restart` and `merge` merge field by field and `env` by variable;
    /// `args`, probes and everything else are replaced whole.
    pub fn overlay(&mut self, other: &AgentConfig) {
        set(&mut self.description, &other.description);
        set(&mut self.harness, &other.harness);
        set(&mut self.model, &other.model);
        set(&mut self.reasoning_effort, &other.reasoning_effort);
        set(&mut self.args, &other.args);
        if let Some(env) = &other.env {
            self.env.get_or_insert_with(BTreeMap::new).extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        set(&mut self.sandbox, &other.sandbox);
        if let Some(budget) = &other.budget {
            self.budget.get_or_insert_with(Budget::default).overlay(budget);
        }
        set(&mut self.startup, &other.startup);
        set(&mut self.readiness, &other.readiness);
        set(&mut self.liveness, &other.liveness);
        if let Some(restart) = &other.restart {
            self.restart.get_or_insert_with(RestartConfig::default).overlay(restart);
        }
        if let Some(merge) = &other.merge {
            self.merge.get_or_insert_with(MergeConfig::default).overlay(merge);
        }
        set(&mut self.task, &other.task);
    }

    /// The three probes as the set `corral_probes` runs.
    pub fn probes(&self) -> ProbeSet {
        ProbeSet { startup: self.startup.clone(), readiness: self.readiness.clone(), liveness: self.liveness.clone() }
    }

    /// The budget as the supervisor enforces it (seconds for time limits).
    pub fn budget_limits(&self) -> crate::model::budget::Budget {
        let budget = self.budget.unwrap_or_default();
        crate::model::budget::Budget {
            tokens: budget.tokens,
            output_tokens: budget.output_tokens,
            cost: budget.cost,
            wall_secs: budget.wall.map(|d| d.as_secs_f64()),
            idle_secs: budget.idle.map(|d| d.as_secs_f64()),
            warn_at: budget.warn_at,
        }
    }

    /// The restart policy as the monitor applies it, defaults filled in.
    pub fn restart_spec(&self) -> crate::model::restart::RestartSpec {
        let restart = self.restart.unwrap_or_default();
        let defaults = crate::model::restart::RestartSpec::default();
        crate::model::restart::RestartSpec {
            policy: restart.policy.unwrap_or_default(),
            limit: restart.limit,
            backoff_secs: restart.backoff.map_or(defaults.backoff_secs, |d| d.as_secs_f64()),
            max_backoff_secs: restart.max_backoff.map_or(defaults.max_backoff_secs, |d| d.as_secs_f64()),
            reset_after_secs: restart.reset_after.map_or(defaults.reset_after_secs, |d| d.as_secs_f64()),
        }
    }
}

impl Budget {
    /// Lays `other` on top of `self`, field by field.
    pub fn overlay(&mut self, other: &Budget) {
        set(&mut self.tokens, &other.tokens);
        set(&mut self.output_tokens, &other.output_tokens);
        set(&mut self.cost, &other.cost);
        set(&mut self.wall, &other.wall);
        set(&mut self.idle, &other.idle);
        set(&mut self.warn_at, &other.warn_at);
    }

    /// True when no limit is set (`warn_at` alone limits nothing).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_none()
            && self.output_tokens.is_none()
            && self.cost.is_none()
            && self.wall.is_none()
            && self.idle.is_none()
    }
}

impl RestartConfig {
    /// Lays `other` on top of `self`, field by field.
    pub fn overlay(&mut self, other: &RestartConfig) {
        set(&mut self.policy, &other.policy);
        set(&mut self.limit, &other.limit);
        set(&mut self.backoff, &other.backoff);
        set(&mut self.max_backoff, &other.max_backoff);
        set(&mut self.reset_after, &other.reset_after);
    }
}

impl MergeConfig {
    /// Lays `other` on top of `self`, field by field.
    pub fn overlay(&mut self, other: &MergeConfig) {
        set(&mut self.policy, &other.policy);
        set(&mut self.target, &other.target);
        set(&mut self.strategy, &other.strategy);
        set(&mut self.gate, &other.gate);
    }
}

fn set<T: Clone>(field: &mut Option<T>, other: &Option<T>) {
    if let Some(value) = other {
        *field = Some(value.clone());
    }
}

/// Where the user file is: `$XDG_CONFIG_HOME/corral/config.toml`, else
/// `$HOME/.config/corral/config.toml`; `None` when neither variable is set
/// (a relative `XDG_CONFIG_HOME` is ignored, as the XDG specification says).
pub fn user_config_path() -> Option<PathBuf> {
    user_config_path_from(std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"))
}

fn user_config_path_from(xdg: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> Option<PathBuf> {
    let config = xdg
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| home.filter(|home| !home.is_empty()).map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join(USER_FILE))
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Serde for `Option<Duration>`: a [`parse_duration`] string or a
/// non-negative number of seconds in; a [`format_duration`] string out.
mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(Some)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration (\"30s\", \"5m\", \"1h30m\", \"250ms\") or a number of seconds")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            match u64::try_from(secs) {
                Ok(secs) => self.visit_u64(secs),
                Err(_) => Err(E::custom(format!("must not be negative, found {secs}"))),
            }
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            if secs > MAX_DURATION_SECS {
                return Err(E::custom(format!("must be at most {MAX_DURATION_SECS} seconds, found {secs}")));
            }
            Ok(Duration::from_secs(secs))
        }

        fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
            if !(secs >= 0.0 && secs <= MAX_DURATION_SECS as f64) {
                return Err(E::custom(format!(
                    "must be a number of seconds from 0 to {MAX_DURATION_SECS}, found {secs}"
                )));
            }
            Ok(Duration::from_secs_f64(secs))
        }
    }
}

fn de_positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let duration = opt_duration::deserialize(deserializer)?;
    if duration == Some(Duration::ZERO) {
        return Err(de::Error::custom("must be greater than 0, found 0"));
    }
    Ok(duration)
}

// ---------------------------------------------------------------------------
// Field checks done while deserializing: the error lands on the value.
// ---------------------------------------------------------------------------

/// A whole number greater than 0 that fits `max`.
struct PositiveInt {
    max: u64,
}

impl Visitor<'_> for PositiveInt {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive integer")
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!("must be greater than 0, found {n}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        if n == 0 {
            Err(E::custom("must be greater than 0, found 0"))
        } else if n > self.max {
            Err(E::custom(format!("must be at most {}, found {n}", self.max)))
        } else {
            Ok(n)
        }
    }

    /// `5e6` is a float in TOML; a whole one is fine.
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
        if n.fract() == 0.0 && n > 0.0 && n <= self.max as f64 {
            Ok(n as u64)
        } else if n.fract() == 0.0 && n <= 0.0 {
            Err(E::custom(format!("must be greater than 0, found {n}")))
        } else {
            Err(E::custom(format!("must be a whole number from 1 to {}, found {n}", self.max)))
        }
    }
}

fn de_positive_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    deserializer.deserialize_any(PositiveInt { max: u64::MAX }).map(Some)
}

fn de_positive_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    // The visitor keeps the value within u32.
    deserializer.deserialize_any(PositiveInt { max: u64::from(u32::MAX) }).map(|n| Some(n as u32))
}

/// A finite number, checked by `accept`, which names the range in `expected`.
struct Number {
    expected: &'static str,
    accept: fn(f64) -> bool,
    must: &'static str,
}

impl Visitor<'_> for Number {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
        self.visit_f64(n as f64)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
        self.visit_f64(n as f64)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<f64, E> {
        if n.is_finite() && (self.accept)(n) {
            Ok(n)
        } else {
            Err(E::custom(format!("must be {}, found {n}", self.must)))
        }
    }
}

fn de_positive_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let number = Number { expected: "a positive number", accept: |n| n > 0.0, must: "greater than 0" };
    deserializer.deserialize_any(number).map(Some)
}

fn de_fraction<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let number = Number {
        expected: "a fraction greater than 0 and at most 1",
        accept: |n| n > 0.0 && n <= 1.0,
        must: "greater than 0 and at most 1",
    };
    deserializer.deserialize_any(number).map(Some)
}

fn de_price<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let number = Number { expected: "a price in USD per million tokens", accept: |n| n >= 0.0, must: "0 or more" };
    deserializer.deserialize_any(number)
}

fn de_opt_price<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    de_price(deserializer).map(Some)
}

/// A non-empty string without control characters (a branch, model or effort).
fn de_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(deserializer)?;
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(de::Error::custom(format!("must be a non-empty name without control characters, found {name:?}")));
    }
    Ok(Some(name))
}

fn de_harness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(deserializer)?;
    corral_harness::launch::check_harness(&name).map_err(de::Error::custom)?;
    Ok(Some(name))
}

fn de_absolute_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(deserializer)?;
    if !path.is_absolute() {
        return Err(de::Error::custom(format!("must be an absolute path, found {:?}", path.display().to_string())));
    }
    Ok(Some(path))
}

fn de_env<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let env = BTreeMap::<String, String>::deserialize(deserializer)?;
    for (name, value) in &env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(de::Error::custom(format!("{name:?} is not a valid environment variable name")));
        }
        if value.contains('\0') {
            return Err(de::Error::custom(format!("the value of {name} holds a NUL byte")));
        }
    }
    Ok(Some(env))
}

/// Startup and liveness probes need `success_threshold = 1`, as in
/// Kubernetes (`ProbeSet::validate` says the same for sets built in code).
fn de_startup_or_liveness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ProbeSpec>, D::Error> {
    let spec = ProbeSpec::deserialize(deserializer)?;
    if spec.success_threshold != 1 {
        return Err(de::Error::custom(format!(
            "success_threshold: must be 1 for startup and liveness probes (as in Kubernetes), got {}",
            spec.success_threshold
        )));
    }
    Ok(Some(spec))
}

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Gate, D::Error> {
        struct GateVisitor;

        impl<'de> Visitor<'de> for GateVisitor {
            type Value = Gate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a string (run with sh -c) or an array of strings (an argv)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Gate, E> {
                if text.trim().is_empty() {
                    return Err(E::custom("the command is empty"));
                }
                Ok(Gate::Shell(text.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Gate, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                match argv.first() {
                    None => Err(de::Error::custom("the command is empty: give at least the program")),
                    Some(program) if program.is_empty() => {
                        Err(de::Error::custom("the program (first element) must not be empty"))
                    }
                    Some(_) => Ok(Gate::Argv(argv)),
                }
            }
        }

        deserializer.deserialize_any(GateVisitor)
    }
}

impl<'de> Deserialize<'de> for MergeConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MergeConfig, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            policy: Option<MergePolicy>,
            #[serde(default, deserialize_with = "de_name")]
            target: Option<String>,
            #[serde(default)]
            strategy: Option<MergeStrategy>,
            #[serde(default)]
            gate: Option<Gate>,
        }

        struct MergeVisitor;

        impl<'de> Visitor<'de> for MergeVisitor {
            type Value = MergeConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a merge policy (\"auto\", \"manual\", \"never\") or a table")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<MergeConfig, E> {
                let policy = MergePolicy::deserialize(text.into_deserializer())?;
                Ok(MergeConfig { policy: Some(policy), ..MergeConfig::default() })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MergeConfig, A::Error> {
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MergeConfig {
                    policy: table.policy,
                    target: table.target,
                    strategy: table.strategy,
                    gate: table.gate,
                })
            }
        }

        deserializer.deserialize_any(MergeVisitor)
    }
}

// ---------------------------------------------------------------------------
// One file, and the checks that need more than one value
// ---------------------------------------------------------------------------

/// One file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    #[serde(default)]
    supervisor: SupervisorConfig,
    #[serde(default)]
    budget: RepoBudget,
    #[serde(default)]
    defaults: AgentConfig,
    #[serde(default)]
    agents: BTreeMap<String, AgentConfig>,
    #[serde(default, rename = "policy")]
    policies: BTreeMap<String, AgentConfig>,
    #[serde(default)]
    prices: BTreeMap<String, Price>,
}

/// A problem found after deserializing, at a key path.
struct Problem {
    path: Vec<String>,
    /// About the key itself (a role name, a policy prefix), not its value.
    on_key: bool,
    message: String,
}

impl Layer {
    fn check(&self) -> Result<(), Problem> {
        let at = |path: &[&str], on_key: bool, message: String| Problem {
            path: path.iter().map(|part| (*part).to_owned()).collect(),
            on_key,
            message,
        };
        check_agent(&self.defaults).map_err(|(field, message)| at(&["defaults", field], false, message))?;
        for (name, role) in &self.agents {
            validate_name(name)
                .map_err(|err| at(&["agents", name], true, format!("invalid role name: {}", err.message)))?;
            check_agent(role).map_err(|(field, message)| at(&["agents", name, field], false, message))?;
        }
        for (prefix, policy) in &self.policies {
            Address::parse(prefix).map_err(|err| at(&["policy", prefix], true, err.message))?;
            check_agent(policy).map_err(|(field, message)| at(&["policy", prefix, field], false, message))?;
        }
        for model in self.prices.keys() {
            if model.trim().is_empty() {
                return Err(at(&["prices", model], true, "the model name is empty".to_owned()));
            }
        }
        Ok(())
    }
}

/// Checks across the fields of one agent table; the error names the field.
fn check_agent(agent: &AgentConfig) -> Result<(), (&'static str, String)> {
    if let Some(restart) = &agent.restart {
        if let (Some(backoff), Some(max)) = (restart.backoff, restart.max_backoff) {
            if backoff > max {
                return Err((
                    "restart",
                    format!(
                        "backoff ({}) is longer than max_backoff ({})",
                        format_duration(backoff),
                        format_duration(max)
                    ),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Positions and key paths in error messages
// ---------------------------------------------------------------------------

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `agents.reviewer.budget`, `policy."/root/review".sandbox`, `args[2]`.
fn format_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    text.push_str(key);
                } else {
                    text.push_str(&format!("{key:?}"));
                }
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// The shape of a TOML document with the byte span of every key and value,
/// read with toml's span support. toml reports where an error is (a byte
/// span) but not under which key; this tree answers that.
#[derive(Debug, Default)]
struct Outline {
    /// `None` for tables that are only implied (`a` in `[a.b]` or `a.b = 1`).
    span: Option<Range<usize>>,
    entries: Vec<OutlineEntry>,
    items: Vec<Outline>,
}

#[derive(Debug)]
struct OutlineEntry {
    key: String,
    key_span: Option<Range<usize>>,
    value: Outline,
}

/// What [`Outline::path_at`] found.
struct Hit {
    path: Vec<Segment>,
    /// The offset is on a key (then `path` is the key's table), not a value.
    on_key: bool,
}

/// Keeps `path` in `best` if `span` holds `offset` at least as tightly
/// (a later, deeper node wins a tie).
fn consider(
    offset: usize,
    span: &Option<Range<usize>>,
    path: &[Segment],
    on_key: bool,
    best: &mut Option<(usize, Hit)>,
) {
    let Some(span) = span else { return };
    // An empty span (at the end of the text) still holds its start.
    if span.start <= offset && (offset < span.end || offset == span.start) {
        let width = span.end - span.start;
        if best.as_ref().is_none_or(|(best_width, _)| width <= *best_width) {
            *best = Some((width, Hit { path: path.to_vec(), on_key }));
        }
    }
}

/// What [`Outline::locate`] found.
struct Found {
    span: Range<usize>,
    key_span: Range<usize>,
    /// The whole path exists (else `span` is that of its longest prefix).
    exact: bool,
}

impl Outline {
    /// The key path of the tightest key or value holding byte `offset`.
    fn path_at(&self, offset: usize) -> Option<Hit> {
        let mut best: Option<(usize, Hit)> = None;
        let mut path = Vec::new();
        self.search(offset, &mut path, &mut best);
        best.map(|(_, hit)| hit)
    }

    fn search(&self, offset: usize, path: &mut Vec<Segment>, best: &mut Option<(usize, Hit)>) {
        for entry in &self.entries {
            consider(offset, &entry.key_span, path, true, best);
            path.push(Segment::Key(entry.key.clone()));
            consider(offset, &entry.value.span, path, false, best);
            entry.value.search(offset, path, best);
            path.pop();
        }
        for (index, item) in self.items.iter().enumerate() {
            path.push(Segment::Index(index));
            consider(offset, &item.span, path, false, best);
            item.search(offset, path, best);
            path.pop();
        }
    }

    /// The span of the value at `path` (or of its longest existing prefix).
    fn locate(&self, path: &[Segment]) -> Option<Found> {
        let mut node = self;
        let mut found: Option<Found> = None;
        for (depth, segment) in path.iter().enumerate() {
            let (key_span, next) = match segment {
                Segment::Key(key) => match node.entries.iter().find(|entry| &entry.key == key) {
                    Some(entry) => (entry.key_span.clone(), &entry.value),
                    None => break,
                },
                Segment::Index(index) => match node.items.get(*index) {
                    Some(item) => (item.span.clone(), item),
                    None => break,
                },
            };
            let key_span = key_span.or_else(|| next.span.clone());
            let span = next.span.clone().or_else(|| key_span.clone());
            if let (Some(span), Some(key_span)) = (span, key_span) {
                found = Some(Found { span, key_span, exact: depth + 1 == path.len() });
            }
            node = next;
        }
        found
    }
}

// toml hands out spans through serde's `Spanned` protocol: a value asked for
// as a struct of these name and fields arrives as a map of start, end and
// value. `toml::Spanned` itself cannot be used for the tree, because
// implied tables have no span and it would fail on them; these names are
// those of `serde_spanned` 0.6, which toml 0.8 uses. (If they ever change,
// the error tests below fail: the key paths go missing.)
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

impl<'de> Deserialize<'de> for Outline {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Outline, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, OutlineVisitor)
    }
}

/// A value without its span (the inside of a spanned one).
struct Bare;

impl<'de> de::DeserializeSeed<'de> for Bare {
    type Value = Outline;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Outline, D::Error> {
        deserializer.deserialize_any(OutlineVisitor)
    }
}

struct OutlineVisitor;

impl<'de> Visitor<'de> for OutlineVisitor {
    type Value = Outline;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Outline, E> {
        Ok(Outline::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Outline, E> {
        Ok(Outline::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Outline, E> {
        Ok(Outline::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Outline, E> {
        Ok(Outline::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<Outline, E> {
        Ok(Outline::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Outline, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Outline>()? {
            items.push(item);
        }
        Ok(Outline { items, ..Outline::default() })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Outline, A::Error> {
        let Some(first) = map.next_key::<OutlineKey>()? else { return Ok(Outline::default()) };
        if first.span.is_none() && first.name == SPANNED_START {
            // A spanned value: start, end, then the value itself.
            let start: usize = map.next_value()?;
            let _end_key: OutlineKey = map.next_key()?.ok_or_else(|| de::Error::missing_field(SPANNED_END))?;
            let end: usize = map.next_value()?;
            let _value_key: OutlineKey = map.next_key()?.ok_or_else(|| de::Error::missing_field(SPANNED_VALUE))?;
            let mut value = map.next_value_seed(Bare)?;
            value.span = Some(start..end);
            return Ok(value);
        }
        let mut entries = vec![OutlineEntry { key: first.name, key_span: first.span, value: map.next_value()? }];
        while let Some(key) = map.next_key::<OutlineKey>()? {
            entries.push(OutlineEntry { key: key.name, key_span: key.span, value: map.next_value()? });
        }
        Ok(Outline { entries, ..Outline::default() })
    }
}

/// A table key with its span when toml gives one.
struct OutlineKey {
    name: String,
    span: Option<Range<usize>>,
}

impl<'de> Deserialize<'de> for OutlineKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OutlineKey, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = OutlineKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E>(self, name: &str) -> Result<OutlineKey, E> {
                Ok(OutlineKey { name: name.to_owned(), span: None })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OutlineKey, A::Error> {
                let (mut start, mut end, mut name) = (None, None, None);
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        SPANNED_START => start = Some(map.next_value::<usize>()?),
                        SPANNED_END => end = Some(map.next_value::<usize>()?),
                        _ => name = Some(map.next_value::<String>()?),
                    }
                }
                let name = name.ok_or_else(|| de::Error::missing_field(SPANNED_VALUE))?;
                let span = start.zip(end).map(|(start, end)| start..end);
                Ok(OutlineKey { name, span })
            }
        }

        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

/// A message on one line: a TOML syntax error's lines joined with `; `;
/// another message (a regex error with its caret drawing) as its first and
/// last lines.
fn one_line(message: &str, syntax: bool) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    match lines.as_slice() {
        _ if syntax => lines.join("; "),
        [] => String::new(),
        [line] => (*line).to_owned(),
        [first, .., last] => format!("{first} {last}"),
    }
}

/// serde's messages in the words of this file format: "key" for field,
/// "table" for map or struct, "array" for sequence, names without backticks.
fn humanize(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            return format!("unknown key {name:?} ({})", expected_names(expected, "keys"));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((name, expected)) = rest.split_once('`') {
            return format!("unknown value {name:?} ({})", expected_names(expected, "values"));
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return format!("missing key {name:?}");
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {}", expected_kind(expected), found_kind(found));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let found = found.strip_prefix("integer `").and_then(|n| n.strip_suffix('`')).unwrap_or(found);
            let expected = match expected {
                "u8" => "an integer from 0 to 255".to_owned(),
                "u16" => "an integer from 0 to 65535".to_owned(),
                "u32" => format!("an integer from 0 to {}", u32::MAX),
                "u64" | "usize" => "a non-negative integer".to_owned(),
                other => expected_kind(other),
            };
            return format!("expected {expected}, found {found}");
        }
    }
    message.to_owned()
}

/// ", expected one of `a`, `b`" → "expected one of: a, b".
fn expected_names(rest: &str, what: &str) -> String {
    let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    if names.is_empty() {
        format!("no {what} are allowed here")
    } else {
        format!("expected one of: {}", names.join(", "))
    }
}

fn expected_kind(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        other if other.starts_with("struct ") || other.starts_with("enum ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

fn found_kind(found: &str) -> &'static str {
    let kind = found.split([' ', '`']).next().unwrap_or(found);
    match kind {
        "boolean" => "a boolean",
        "integer" => "an integer",
        "floating" => "a float",
        "string" | "character" => "a string",
        "sequence" => "an array",
        "map" => "a table",
        _ => "another kind of value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_probes::ProbeKind;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_str(text, Path::new("corral.toml")).map_err(|err| err.to_string())
    }

    /// The error for `text`, which must name `line` and `key`.
    fn error(text: &str, line: usize, key: &str) -> String {
        let err = Config::from_str(text, Path::new("corral.toml")).expect_err(text);
        let message = err.to_string();
        let ConfigError::Invalid { line: got_line, key: got_key, .. } = &err else {
            panic!("not an Invalid error: {message}")
        };
        assert_eq!((*got_line, got_key.as_str()), (line, key), "{message}");
        assert!(message.starts_with(&format!("corral.toml:{line}:")), "{message}");
        assert!(message.contains(&format!(": {key}: ")) || key.is_empty(), "{message}");
        message
    }

    const FULL: &str = r#"
[supervisor]
max_threads = 6
max_depth = 2
target_branch = "main"
worktree_root = "/srv/corral"
grace = "10s"

[budget]
daily_tokens = 5_000_000
daily_cost = 20.0
warn_at = 0.8

[defaults]
budget = { tokens = 1_000_000, wall = "2h" }

[prices."claude-sonnet-4-5"]
input = 3.0
output = 15.0
cache_read = 0.30
cache_write = 3.75

[prices.cheap]
input = 1
output = 2

[agents.reviewer]
description = "reviews diffs"
harness = "claude"
model = "claude-sonnet-4-5"
reasoning_effort = "high"
args = ["--max-turns", "20"]
env = { RUST_LOG = "info" }
sandbox = "read-only"
budget = { tokens = 400_000, output_tokens = 50_000, cost = 2.5, wall = "30m", idle = "5m", warn_at = 0.9 }
readiness = { event = "init" }
liveness = { idle = { seconds = 300 }, period_seconds = 30 }
startup = { log_line = "ready", failure_threshold = 30 }
restart = { policy = "OnFailure", limit = 3, backoff = "10s", max_backoff = "300s", reset_after = "10m" }
merge = { policy = "auto", target = "main", strategy = "squash", gate = "cargo test" }
task = "default task text"

[agents.builder]
harness = "codex"
merge = "never"

[agents.builder.restart]
policy = "Always"

[policy."/root/review"]
sandbox = "read-only"
"#;

    #[test]
    fn the_full_example_parses_to_the_expected_values() {
        let config = parse(FULL).unwrap();
        assert_eq!(
            config.supervisor,
            SupervisorConfig {
                max_threads: Some(6),
                max_depth: Some(2),
                target_branch: Some("main".into()),
                worktree_root: Some("/srv/corral".into()),
                grace: Some(Duration::from_secs(10)),
            }
        );
        assert_eq!(
            config.budget,
            RepoBudget { daily_tokens: Some(5_000_000), daily_cost: Some(20.0), warn_at: Some(0.8) }
        );
        assert_eq!(
            config.defaults.budget,
            Some(Budget { tokens: Some(1_000_000), wall: Some(Duration::from_secs(7200)), ..Budget::default() })
        );
        assert_eq!(
            config.prices["claude-sonnet-4-5"],
            Price { input: 3.0, output: 15.0, cache_read: 0.30, cache_write: 3.75 }
        );
        assert_eq!(config.prices["cheap"], Price { input: 1.0, output: 2.0, cache_read: 1.0, cache_write: 1.0 });

        let reviewer = &config.agents["reviewer"];
        let expected = AgentConfig {
            description: Some("reviews diffs".into()),
            harness: Some("claude".into()),
            model: Some("claude-sonnet-4-5".into()),
            reasoning_effort: Some("high".into()),
            args: Some(vec!["--max-turns".into(), "20".into()]),
            env: Some(BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())])),
            sandbox: Some(Sandbox::ReadOnly),
            budget: Some(Budget {
                tokens: Some(400_000),
                output_tokens: Some(50_000),
                cost: Some(2.5),
                wall: Some(Duration::from_secs(1800)),
                idle: Some(Duration::from_secs(300)),
                warn_at: Some(0.9),
            }),
            startup: Some(ProbeSpec {
                failure_threshold: 30,
                ..ProbeSpec::new(ProbeKind::LogLine(corral_probes::Pattern::new("ready").unwrap()))
            }),
            readiness: Some(ProbeSpec::new(ProbeKind::Event("init".into()))),
            liveness: Some(ProbeSpec {
                period_seconds: 30.0,
                ..ProbeSpec::new(ProbeKind::Idle(corral_probes::IdleAction { seconds: 300.0 }))
            }),
            restart: Some(RestartConfig {
                policy: Some(RestartPolicy::OnFailure),
                limit: Some(3),
                backoff: Some(Duration::from_secs(10)),
                max_backoff: Some(Duration::from_secs(300)),
                reset_after: Some(Duration::from_secs(600)),
            }),
            merge: Some(MergeConfig {
                policy: Some(MergePolicy::Auto),
                target: Some("main".into()),
                strategy: Some(MergeStrategy::Squash),
                gate: Some(Gate::Shell("cargo test".into())),
            }),
            task: Some("default task text".into()),
        };
        assert_eq!(reviewer, &expected);

        let builder = &config.agents["builder"];
        assert_eq!(builder.merge, Some(MergeConfig { policy: Some(MergePolicy::Never), ..MergeConfig::default() }));
        assert_eq!(builder.restart.unwrap().policy, Some(RestartPolicy::Always));
        assert_eq!(config.policies["/root/review"].sandbox, Some(Sandbox::ReadOnly));
        assert_eq!(config.sources, vec![PathBuf::from("corral.toml")]);
    }

    #[test]
    fn an_empty_file_is_an_empty_config() {
        let config = parse("# nothing yet\n").unwrap();
        assert_eq!(config, Config { sources: vec!["corral.toml".into()], ..Config::default() });
    }

    #[test]
    fn the_config_round_trips_through_json_and_toml() {
        let config = parse(FULL).unwrap();
        let json = serde_json::to_string(&config.agents["reviewer"]).unwrap();
        assert_eq!(serde_json::from_str::<AgentConfig>(&json).unwrap(), config.agents["reviewer"]);
        let text = toml::to_string(&config).unwrap();
        let again = parse(&text).unwrap();
        assert_eq!(again, config, "{text}");
    }

    #[test]
    fn gates_and_sandboxes_have_their_spellings() {
        let config = parse(
            "[agents.a]\nmerge = { gate = [\"cargo\", \"test\"], strategy = \"ff-only\" }\nsandbox = \"workspace-write\"\n\
             [agents.b]\nsandbox = \"full\"\nmerge = { strategy = \"rebase\", policy = \"manual\" }\n",
        )
        .unwrap();
        let a = &config.agents["a"];
        let merge = a.merge.as_ref().unwrap();
        assert_eq!(merge.gate, Some(Gate::Argv(vec!["cargo".into(), "test".into()])));
        assert_eq!(merge.gate.as_ref().unwrap().argv(), vec!["cargo", "test"]);
        assert_eq!(Gate::Shell("make check".into()).argv(), vec!["sh", "-c", "make check"]);
        assert_eq!(merge.strategy, Some(MergeStrategy::FfOnly));
        assert_eq!(a.sandbox, Some(Sandbox::WorkspaceWrite));
        assert_eq!(config.agents["b"].sandbox, Some(Sandbox::Full));
        assert!(Sandbox::ReadOnly < Sandbox::WorkspaceWrite && Sandbox::WorkspaceWrite < Sandbox::Full);
    }

    #[test]
    fn the_repository_file_overrides_the_user_file_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        let repo = dir.path().join("corral.toml");
        std::fs::write(
            &user,
            r#"
[supervisor]
max_threads = 4
grace = "5s"

[budget]
daily_cost = 10

[agents.reviewer]
harness = "claude"
model = "claude-opus-4"
env = { A = "user", B = "user" }
budget = { tokens = 100, cost = 1.0 }

[agents.mine]
harness = "aider"

[prices.m]
input = 1
output = 1
cache_read = 0.5
"#,
        )
        .unwrap();
        std::fs::write(
            &repo,
            r#"
[supervisor]
max_threads = 8

[agents.reviewer]
model = "claude-sonnet-4-5"
env = { B = "repo" }
budget = { tokens = 200 }

[prices.m]
input = 2
output = 2
"#,
        )
        .unwrap();
        let missing = dir.path().join("missing.toml");
        let config = Config::load_files(&[missing, user.clone(), repo.clone()]).unwrap();
        assert_eq!(config.sources, vec![user, repo]);
        assert_eq!(config.supervisor.max_threads, Some(8));
        assert_eq!(config.supervisor.grace, Some(Duration::from_secs(5)));
        assert_eq!(config.budget.daily_cost, Some(10.0));
        let reviewer = &config.agents["reviewer"];
        assert_eq!(reviewer.harness.as_deref(), Some("claude"));
        assert_eq!(reviewer.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            reviewer.env,
            Some(BTreeMap::from([("A".to_owned(), "user".to_owned()), ("B".to_owned(), "repo".to_owned())]))
        );
        assert_eq!(reviewer.budget, Some(Budget { tokens: Some(200), cost: Some(1.0), ..Budget::default() }));
        assert_eq!(config.agents["mine"].harness.as_deref(), Some("aider"));
        // A model's price is replaced whole.
        assert_eq!(config.prices["m"], Price { input: 2.0, output: 2.0, cache_read: 2.0, cache_write: 2.0 });
    }

    #[test]
    fn load_reads_corral_toml_at_the_repository_root_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load_files(&[dir.path().join(REPO_FILE)]).unwrap(), Config::default());
        std::fs::write(dir.path().join(REPO_FILE), "[supervisor]\nmax_depth = 3\n").unwrap();
        let config = Config::load(dir.path()).unwrap();
        assert_eq!(config.supervisor.max_depth, Some(3));
        assert!(config.sources.contains(&dir.path().join(REPO_FILE)));
        std::fs::write(dir.path().join(REPO_FILE), "[supervisor]\nmax_depth = 0\n").unwrap();
        let message = Config::load(dir.path()).unwrap_err().to_string();
        let expected = format!(
            "{}:2:13: supervisor.max_depth: must be greater than 0, found 0",
            dir.path().join(REPO_FILE).display()
        );
        assert_eq!(message, expected);
    }

    #[test]
    fn the_user_file_is_under_the_xdg_config_folder() {
        let path =
            |xdg: Option<&str>, home: Option<&str>| user_config_path_from(xdg.map(Into::into), home.map(Into::into));
        assert_eq!(path(Some("/x"), Some("/home/u")), Some(PathBuf::from("/x/corral/config.toml")));
        assert_eq!(path(None, Some("/home/u")), Some(PathBuf::from("/home/u/.config/corral/config.toml")));
        assert_eq!(path(Some("relative"), Some("/home/u")), Some(PathBuf::from("/home/u/.config/corral/config.toml")));
        assert_eq!(path(Some(""), None), None);
    }

    #[test]
    fn overlay_lets_set_fields_win_and_merges_budgets() {
        let mut base = AgentConfig {
            harness: Some("claude".into()),
            model: Some("a".into()),
            args: Some(vec!["--x".into()]),
            budget: Some(Budget { tokens: Some(10), cost: Some(1.0), ..Budget::default() }),
            restart: Some(RestartConfig { policy: Some(RestartPolicy::OnFailure), ..RestartConfig::default() }),
            readiness: Some(ProbeSpec::new(ProbeKind::Event("init".into()))),
            ..AgentConfig::default()
        };
        let flags = AgentConfig {
            model: Some("b".into()),
            args: Some(vec![]),
            budget: Some(Budget { tokens: Some(5), wall: Some(Duration::from_secs(60)), ..Budget::default() }),
            restart: Some(RestartConfig { limit: Some(2), ..RestartConfig::default() }),
            ..AgentConfig::default()
        };
        base.overlay(&flags);
        assert_eq!(base.harness.as_deref(), Some("claude"));
        assert_eq!(base.model.as_deref(), Some("b"));
        assert_eq!(base.args, Some(vec![]));
        assert_eq!(
            base.budget,
            Some(Budget { tokens: Some(5), cost: Some(1.0), wall: Some(Duration::from_secs(60)), ..Budget::default() })
        );
        assert_eq!(
            base.restart,
            Some(RestartConfig { policy: Some(RestartPolicy::OnFailure), limit: Some(2), ..RestartConfig::default() })
        );
        assert!(base.probes().readiness.is_some());
        // An empty overlay changes nothing.
        let before = base.clone();
        base.overlay(&AgentConfig::default());
        assert_eq!(base, before);
    }

    #[test]
    fn resolve_applies_defaults_then_policies_outer_to_inner_then_the_role() {
        let config = parse(
            r#"
[defaults]
harness = "claude"
sandbox = "full"
budget = { tokens = 1000, wall = "1h" }

[policy."/root"]
model = "root-model"

[policy."/root/review/deep"]
sandbox = "workspace-write"
budget = { tokens = 10 }

[policy."/root/review"]
sandbox = "read-only"
model = "review-model"
budget = { tokens = 100 }

[agents.reviewer]
reasoning_effort = "high"
budget = { cost = 1.5 }
"#,
        )
        .unwrap();

        let top = config.resolve("/root/api", None).unwrap();
        assert_eq!(top.sandbox, Some(Sandbox::Full));
        assert_eq!(top.model.as_deref(), Some("root-model"));

        let review = config.resolve("/root/review/dep", Some("reviewer")).unwrap();
        assert_eq!(review.harness.as_deref(), Some("claude"));
        assert_eq!(review.sandbox, Some(Sandbox::ReadOnly));
        assert_eq!(review.model.as_deref(), Some("review-model"));
        assert_eq!(review.reasoning_effort.as_deref(), Some("high"));
        assert_eq!(
            review.budget,
            Some(Budget {
                tokens: Some(100),
                cost: Some(1.5),
                wall: Some(Duration::from_secs(3600)),
                ..Budget::default()
            })
        );

        // The inner prefix wins over the outer one, at any depth below it.
        let deep = config.resolve("/root/review/deep/x/y", None).unwrap();
        assert_eq!(deep.sandbox, Some(Sandbox::WorkspaceWrite));
        assert_eq!(deep.budget.unwrap().tokens, Some(10));
        assert_eq!(deep.model.as_deref(), Some("review-model"));

        // Prefixes match whole segments.
        let reviewer = config.resolve("/root/reviewer", None).unwrap();
        assert_eq!(reviewer.sandbox, Some(Sandbox::Full));
        assert_eq!(config.resolve("/root/review", None).unwrap().sandbox, Some(Sandbox::ReadOnly));

        let err = config.resolve("/root/x", Some("writer")).unwrap_err().to_string();
        assert_eq!(err, "unknown role \"writer\" (known roles: reviewer)");
        let err = Config::default().resolve("/root/x", Some("writer")).unwrap_err().to_string();
        assert!(err.contains("no roles are defined"), "{err}");
        let err = config.resolve("root/x", None).unwrap_err().to_string();
        assert!(err.starts_with("invalid address \"root/x\""), "{err}");
    }

    #[test]
    fn prices_cost_usage_and_match_dated_model_names() {
        let config = parse(FULL).unwrap();
        let price = config.price("claude-sonnet-4-5").unwrap();
        let usage = TokenUsage { input: 1_000_000, output: 100_000, cache_read: 2_000_000, cache_write: 400_000 };
        let cost = price.cost(&usage);
        assert!((cost - (3.0 + 1.5 + 0.6 + 1.5)).abs() < 1e-9, "{cost}");
        assert_eq!(config.price("claude-sonnet-4-5-20250929"), Some(price));
        assert_eq!(config.price("claude-sonnet-4-50"), None);
        assert_eq!(config.price("gpt-5"), None);
    }

    #[test]
    fn an_unknown_top_level_key_names_its_line() {
        let message = error("[supervisor]\nmax_threads = 2\n\n[supervisr]\nx = 1\n", 4, "");
        assert_eq!(
            message,
            "corral.toml:4:2: unknown key \"supervisr\" (expected one of: supervisor, budget, defaults, agents, policy, prices)"
        );
    }

    #[test]
    fn an_unknown_key_in_a_role_names_its_line_and_table() {
        let message = error("[agents.reviewer]\nharness = \"claude\"\nmodle = \"x\"\n", 3, "agents.reviewer");
        assert!(
            message.starts_with(
                "corral.toml:3:1: agents.reviewer: unknown key \"modle\" (expected one of: description, harness,"
            ),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_key_in_a_nested_budget_names_its_line_and_table() {
        let text = "[agents.reviewer]\nharness = \"claude\"\n\n[agents.reviewer.budget]\ntokens = 5\ntokns = 3\n";
        let message = error(text, 6, "agents.reviewer.budget");
        assert_eq!(
            message,
            "corral.toml:6:1: agents.reviewer.budget: unknown key \"tokns\" (expected one of: tokens, output_tokens, cost, wall, idle, warn_at)"
        );
        // The same in an inline table, in [defaults] and in a policy.
        let message = error("[defaults]\nbudget = { tokens = 5, wal = \"1h\" }\n", 2, "defaults.budget");
        assert!(message.starts_with("corral.toml:2:24: defaults.budget: unknown key \"wal\""), "{message}");
        error("[policy.\"/root/a\"]\nrestart = { polcy = \"Never\" }\n", 2, "policy.\"/root/a\".restart");
    }

    #[test]
    fn a_wrong_type_names_its_line_column_and_key() {
        let message = error("\n[supervisor]\nmax_threads = \"6\"\n", 3, "supervisor.max_threads");
        assert_eq!(message, "corral.toml:3:15: supervisor.max_threads: expected a positive integer, found a string");
        let message = error("[agents.a]\nharness = 5\n", 2, "agents.a.harness");
        assert!(message.ends_with("expected a string, found an integer"), "{message}");
        let message = error("[agents.a]\nargs = \"--x\"\n", 2, "agents.a.args");
        assert!(message.ends_with("expected an array, found a string"), "{message}");
        let message = error("[agents.a]\nargs = [\"--x\", 2]\n", 2, "agents.a.args[1]");
        assert!(message.ends_with("expected a string, found an integer"), "{message}");
        let message = error("[agents.a]\nsandbox = \"readonly\"\n", 2, "agents.a.sandbox");
        assert!(
            message.ends_with("unknown value \"readonly\" (expected one of: read-only, workspace-write, full)"),
            "{message}"
        );
        let message = error("[agents.a]\nrestart = { policy = \"on-failure\" }\n", 2, "agents.a.restart.policy");
        assert!(message.contains("(expected one of: Never, OnFailure, Always)"), "{message}");
        error("[agents.a]\nmerge = \"sometimes\"\n", 2, "agents.a.merge");
        error("[agents.a]\nmerge = 3\n", 2, "agents.a.merge");
        error("[agents.a]\nmerge = { gate = [] }\n", 2, "agents.a.merge.gate");
        error("agents = 3\n", 1, "agents");
        error("[agents.a]\nharness = \"cluade\"\n", 2, "agents.a.harness");
        error("[agents.a]\nrestart = { limit = -1 }\n", 2, "agents.a.restart.limit");
    }

    #[test]
    fn a_negative_or_zero_budget_names_its_line_and_key() {
        let message = error("[budget]\ndaily_tokens = 100\ndaily_cost = -3\n", 3, "budget.daily_cost");
        assert_eq!(message, "corral.toml:3:14: budget.daily_cost: must be greater than 0, found -3");
        let message = error("[agents.a]\nbudget = { tokens = -5 }\n", 2, "agents.a.budget.tokens");
        assert!(message.ends_with("must be greater than 0, found -5"), "{message}");
        error("[agents.a.budget]\noutput_tokens = 0\n", 2, "agents.a.budget.output_tokens");
        error("[defaults]\nbudget = { wall = \"0s\" }\n", 2, "defaults.budget.wall");
        error("[defaults]\nbudget = { cost = 0 }\n", 2, "defaults.budget.cost");
        error("[defaults]\nbudget = { cost = nan }\n", 2, "defaults.budget.cost");
        error("[prices.m]\ninput = -1\noutput = 1\n", 2, "prices.m.input");
        error("[prices.m]\ninput = 1\n", 1, "prices.m");
    }

    #[test]
    fn dotted_keys_and_later_tables_are_found_too() {
        let message = error("agents.a.budget.tokens = 0\n", 1, "agents.a.budget.tokens");
        assert!(message.starts_with("corral.toml:1:26: "), "{message}");
        let text = "[agents.a]\nreadiness = { event = \"init\" }\n\n[agents.b]\n\n[agents.a.budget]\ntokens = true\n";
        let message = error(text, 7, "agents.a.budget.tokens");
        assert!(message.ends_with("expected a positive integer, found a boolean"), "{message}");
        error("[agents.a]\nenv = { \"A=B\" = \"x\" }\n", 2, "agents.a.env");
        error("[agents.a]\ntask = 1979-05-27\n", 2, "agents.a.task");
    }

    #[test]
    fn warn_at_must_be_a_fraction() {
        let message = error("[budget]\nwarn_at = 1.5\n", 2, "budget.warn_at");
        assert!(message.ends_with("must be greater than 0 and at most 1, found 1.5"), "{message}");
        error("[agents.x]\nbudget = { warn_at = 0 }\n", 2, "agents.x.budget.warn_at");
        assert_eq!(parse("[budget]\nwarn_at = 1\n").unwrap().budget.warn_at, Some(1.0));
    }

    #[test]
    fn zero_max_threads_names_its_line_and_key() {
        let message = error("[supervisor]\n\nmax_threads = 0\n", 3, "supervisor.max_threads");
        assert_eq!(message, "corral.toml:3:15: supervisor.max_threads: must be greater than 0, found 0");
        error("[supervisor]\nmax_threads = 5_000_000_000\n", 2, "supervisor.max_threads");
        error("[supervisor]\nworktree_root = \"relative/path\"\n", 2, "supervisor.worktree_root");
        error("[supervisor]\ntarget_branch = \"\"\n", 2, "supervisor.target_branch");
    }

    #[test]
    fn a_bad_duration_names_its_line_and_key() {
        let message =
            error("[agents.a]\nharness = \"claude\"\nbudget = { idle = \"5x\" }\n", 3, "agents.a.budget.idle");
        assert!(
            message.starts_with("corral.toml:3:19: agents.a.budget.idle: bad duration \"5x\": unknown unit \"x\""),
            "{message}"
        );
        error("[supervisor]\ngrace = -1\n", 2, "supervisor.grace");
        error("[supervisor]\ngrace = \"10\"\n", 2, "supervisor.grace");
        error("[supervisor]\ngrace = true\n", 2, "supervisor.grace");
        let message = error("[agents.a.restart]\nbackoff = \"1m\"\nmax_backoff = \"10s\"\n", 1, "agents.a.restart");
        assert!(message.ends_with("backoff (1m) is longer than max_backoff (10s)"), "{message}");
    }

    #[test]
    fn an_invalid_probe_names_its_line_and_key() {
        let text = "[agents.a]\nharness = \"claude\"\nreadiness = { event = \"init\", period_seconds = 0 }\n";
        let message = error(text, 3, "agents.a.readiness.period_seconds");
        assert!(message.starts_with("corral.toml:3:48: agents.a.readiness.period_seconds: must be"), "{message}");
        let message = error("[agents.a]\nliveness = { event = \"init\", perod_seconds = 5 }\n", 2, "agents.a.liveness");
        assert!(message.contains("unknown key \"perod_seconds\""), "{message}");
        let message = error(
            "[agents.a]\nstartup = { event = \"init\", success_threshold = 2 }\n",
            2,
            "agents.a.startup.success_threshold",
        );
        assert!(message.contains("must be 1 for startup and liveness probes"), "{message}");
        let message = error("[agents.a.liveness]\nperiod_seconds = 5\n", 1, "agents.a.liveness");
        assert!(message.contains("exactly one"), "{message}");
        let message = error("[agents.a]\nreadiness = { log_line = \"(\" }\n", 2, "agents.a.readiness.log_line");
        assert!(
            message.ends_with(
                ": agents.a.readiness.log_line: invalid regex \"(\": regex parse error: error: unclosed group"
            ),
            "{message}"
        );
        error("[agents.a]\nreadiness = { http_get = { port = 0 } }\n", 2, "agents.a.readiness.http_get.port");
    }

    #[test]
    fn bad_role_names_and_policy_prefixes_name_their_line() {
        let message = error("[agents.\"a b\"]\nharness = \"claude\"\n", 1, "agents.\"a b\"");
        assert!(message.contains("invalid role name"), "{message}");
        let message = error("\n[policy.\"/review\"]\nsandbox = \"read-only\"\n", 2, "policy.\"/review\"");
        assert!(message.contains("starts with /root"), "{message}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let message = error("[supervisor]\nmax_threads = = 3\n", 2, "");
        assert!(message.starts_with("corral.toml:2:"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        error("[a]\nx = 1\n[a]\n", 3, "");
    }

    #[test]
    fn durations_parse() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m 15s", Duration::from_secs(5415)),
            ("1.5h", Duration::from_secs(5400)),
            ("0.25s", Duration::from_millis(250)),
            (".5s", Duration::from_millis(500)),
            ("2d", Duration::from_secs(172_800)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "5x", "10", "s", "-5s", "1.2.3s", "5 m x", "1e3s", "99999999999d", "h1"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit \"x\""));
        assert!(parse_duration("10").unwrap_err().contains("has no unit"));
        for duration in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(5400),
            Duration::new(3661, 1_002_003),
            Duration::from_secs(86_400 * 3),
        ] {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration), "{}", format_duration(duration));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");

        let numbers = parse("[supervisor]\ngrace = 2.5\n[agents.a]\nbudget = { wall = 90 }\n").unwrap();
        assert_eq!(numbers.supervisor.grace, Some(Duration::from_millis(2500)));
        assert_eq!(numbers.agents["a"].budget.unwrap().wall, Some(Duration::from_secs(90)));
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "a\nbé = 1\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap()), (2, 4));
        assert_eq!(line_column(text, 100), (3, 1));
    }
}
