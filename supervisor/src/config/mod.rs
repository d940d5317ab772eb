//! Configuration. Owns reading and resolving `corral.toml` (at the
//! repository root) and the user's `config.toml`: the file format, its
//! checks and error messages, layering the two files, and resolving the
//! settings of one agent. Never does I/O beyond reading those two files and
//! never talks to the daemon: it starts no process, touches no git state
//! and applies nothing. The supervisor asks [`Config::resolve`] for the
//! settings of an agent and lays the command line's flags on top with
//! [`AgentConfig::overlay`].
//!
//! | module | what |
//! |---|---|
//! | this one | the types of the file and what each key means; [`Config::load`], [`Config::from_str`], layering |
//! | `resolve` | an agent's settings: `[defaults]`, policies by address prefix, role; [`AgentConfig::overlay`] |
//! | `de` | the serde deserializers that check values: durations, positive numbers, budgets, names, paths, harnesses, probes, `merge` |
//! | `errors` | [`ConfigError`]; toml's errors as `FILE:LINE:COLUMN: KEY.PATH: message` |
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
//! corral.toml:12:1: agents.reviewer.budget: unknown key "tokns" (expected one of: tokens, output_tokens, cost, wall, idle, warn_at, on_exceeded)
//! corral.toml:7:15: supervisor.max_threads: expected a positive integer, found a string
//! corral.toml:9:14: budget.daily_cost: must be greater than 0, found -3
//! corral.toml:20:48: agents.reviewer.readiness.period_seconds: must be a number of seconds greater than 0 and at most 1000000000, got 0
//! ```
//!
//! `[proxy.anthropic]`, `[proxy.openai]` and `[proxy.gemini]` say where a
//! proxy-metered agent's calls go (`upstream`, a base URL) and which key
//! they carry (`key_file`, an absolute path to a file of mode 0600), for an
//! agent whose spawning environment sets neither; a key file readable by
//! anyone but its owner is refused at spawn. The file is read by the daemon
//! (`daemon::upstream`), not here.
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
//! worktree_pool = 2     # worktrees kept checked out ahead per base branch; unset: none
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
//! network = "model"        # none | model | full (TCP; the default is full)
//! max_memory = "2G"        # and max_processes = 256, max_open_files = 4096
//! sandbox_deny_read = ["~/.ssh", "~/.aws", "~/.gnupg", "~/.netrc"]
//! sandbox_fallback = "refuse"   # or "warn": run with what the kernel can enforce
//! budget = { tokens = 400_000, output_tokens = 50_000, cost = 2.5, wall = "30m", idle = "5m", warn_at = 0.9 }
//! # on_exceeded = "pause" in a budget: a spent token, output or cost limit freezes the
//! # subtree until `corral budget` raises it, instead of stopping it (the default, "stop")
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
//!   `h`, `d`) or plain non-negative numbers of seconds (`30`, `0.5`), read
//!   by `crate::model::duration` as everywhere else.
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

// `de::budget` and `errors` are also the run file's (`cli::run::file`).
pub(crate) mod de;
pub(crate) mod errors;
mod resolve;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_harness::{Harness, TokenUsage};
use corral_probes::ProbeSpec;
use serde::{Deserialize, Serialize};

pub use errors::ConfigError;
use errors::Source;
use resolve::set;

use crate::model::address::{validate_name, Address};
use crate::model::duration::format_duration;

/// The repository's configuration file, at the repository root.
pub const REPO_FILE: &str = "corral.toml";

/// The user's configuration file, below the XDG config folder.
pub const USER_FILE: &str = "corral/config.toml";

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
    /// `[proxy.PROVIDER]`: the upstream and key of proxy-metered agents'
    /// calls, where the spawning environment gives none.
    pub proxy: ProxySection,
    /// The files this configuration was read from, lowest precedence first.
    #[serde(skip)]
    pub sources: Vec<PathBuf>,
}

/// `[proxy]`: by provider (`anthropic`, `openai`, `gemini`), where the
/// metering proxy sends a proxy-metered agent's calls and which key they
/// carry, for an agent whose spawning environment sets no base URL
/// (`ANTHROPIC_BASE_URL`, `OPENAI_BASE_URL`, `GOOGLE_GEMINI_BASE_URL`) or
/// no key of that provider. The spawning environment wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic: Option<ProxyProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai: Option<ProxyProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemini: Option<ProxyProvider>,
}

/// One provider's `[proxy.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProvider {
    /// The upstream's base URL (`https://gateway.example/anthropic`).
    #[serde(default, deserialize_with = "de::base_url", skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// An absolute path to a file holding the key, of mode 0600 and the
    /// user's own; read by the daemon at each spawn (a file readable by
    /// others is refused).
    #[serde(default, deserialize_with = "de::absolute_path", skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl ProxySection {
    /// Each provider's table with the variables it fills: the base URL's,
    /// then the key's (the first of which is set, the rest are
    /// alternatives the spawning environment may have set instead).
    pub fn providers(&self) -> [(&'static str, Option<&ProxyProvider>, &'static str, &'static [&'static str]); 3] {
        [
            (
                "anthropic",
                self.anthropic.as_ref(),
                "ANTHROPIC_BASE_URL",
                &["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"],
            ),
            ("openai", self.openai.as_ref(), "OPENAI_BASE_URL", &["OPENAI_API_KEY"]),
            ("gemini", self.gemini.as_ref(), "GOOGLE_GEMINI_BASE_URL", &["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
        ]
    }

    fn overlay(&mut self, other: &ProxySection) {
        for (mine, theirs) in [
            (&mut self.anthropic, &other.anthropic),
            (&mut self.openai, &other.openai),
            (&mut self.gemini, &other.gemini),
        ] {
            if let Some(theirs) = theirs {
                let mine = mine.get_or_insert_with(ProxyProvider::default);
                set(&mut mine.upstream, &theirs.upstream);
                set(&mut mine.key_file, &theirs.key_file);
            }
        }
    }
}

/// `[supervisor]`. Unset fields take the supervisor's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Agents running at once; more wait in Pending, in order. Unset: no limit.
    #[serde(default, deserialize_with = "de::positive_u32", skip_serializing_if = "Option::is_none")]
    pub max_threads: Option<u32>,
    /// Deepest address allowed below `/root` (`/root/a` is 1). Unset: no limit.
    #[serde(default, deserialize_with = "de::positive_u32", skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Default merge target. Unset: the branch checked out at spawn.
    #[serde(default, deserialize_with = "de::name", skip_serializing_if = "Option::is_none")]
    pub target_branch: Option<String>,
    /// Where worktrees live (absolute). Unset: `$CORRAL_WORKTREE_ROOT`, else
    /// the XDG data folder.
    #[serde(default, deserialize_with = "de::absolute_path", skip_serializing_if = "Option::is_none")]
    pub worktree_root: Option<PathBuf>,
    /// Default grace period of a stop (SIGTERM, this long, SIGKILL).
    #[serde(default, with = "crate::model::duration::opt_text", skip_serializing_if = "Option::is_none")]
    pub grace: Option<Duration>,
    /// Worktrees kept ready per base branch, so a spawn need not check
    /// out a tree (see `git::pool`). Unset: none.
    #[serde(default, deserialize_with = "de::positive_u32", skip_serializing_if = "Option::is_none")]
    pub worktree_pool: Option<u32>,
    /// Time between two progress digests of one child (`notify =
    /// "progress"`); unset: 30 s.
    #[serde(default, with = "crate::model::duration::opt_text", skip_serializing_if = "Option::is_none")]
    pub progress_interval: Option<Duration>,
}

/// `[budget]`: what the whole repository may spend per calendar day (local
/// time). Unset: no daily limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoBudget {
    /// Tokens (all four kinds added) per day.
    #[serde(default, deserialize_with = "de::positive_u64", skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    /// USD per day.
    #[serde(default, deserialize_with = "de::positive_f64", skip_serializing_if = "Option::is_none")]
    pub daily_cost: Option<f64>,
    /// Fraction of a daily limit at which a `budget_warning` is emitted;
    /// unset: 0.8.
    #[serde(default, deserialize_with = "de::fraction", skip_serializing_if = "Option::is_none")]
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
    /// Which agent CLI (`claude`, `codex`, `gemini`, `opencode`, `aider`,
    /// `generic`).
    #[serde(default, deserialize_with = "de::harness", skip_serializing_if = "Option::is_none")]
    pub harness: Option<Harness>,
    /// The model, as the harness names it.
    #[serde(default, deserialize_with = "de::name", skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Reasoning effort as the harness spells it (e.g. `low`, `medium`, `high`).
    #[serde(default, deserialize_with = "de::name", skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Extra arguments for the harness's command line (replaced whole by a
    /// later layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment variables (merged by name with a later layer).
    #[serde(default, deserialize_with = "de::env", skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// What the agent may touch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    /// What TCP the agent may open: `none`, `model` (only corral's model
    /// proxy) or `full` (see `crate::sys::sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Where its usage is counted: `proxy` (corral's metering proxy, the
    /// default for claude and codex) or `stream` (its CLI's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<crate::model::budget::Meter>,
    /// The most memory the agent may use (`"512M"`, `"2G"`, or bytes).
    #[serde(default, deserialize_with = "de::memory", skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// The most processes the agent may have at once.
    #[serde(default, deserialize_with = "de::positive_u64", skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    /// The most files each of its processes may hold open.
    #[serde(default, deserialize_with = "de::positive_u64", skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<u64>,
    /// Paths a sandboxed agent may not read (`~/` is the person's home);
    /// unset: `~/.ssh`, `~/.aws`, `~/.gnupg`. Replaced whole by a later layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_deny_read: Option<Vec<String>>,
    /// `"refuse"` (the default: a spawn the kernel cannot sandbox as asked
    /// fails) or `"warn"` (it runs with what can be enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_fallback: Option<SandboxFallback>,
    /// What a child tells its parent agent: `completion`, `progress` or
    /// `none` (see `model::notify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::model::notify::Notify>,
    /// Spending limits (merged field by field with a later layer), as the
    /// file spells them (`wall`, `idle`; see `de::budget`).
    #[serde(default, with = "de::budget", skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Startup probe: gates the others; failing it stops the agent.
    #[serde(default, deserialize_with = "de::startup_or_liveness", skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeSpec>,
    /// Readiness probe: marks the agent ready or not; never stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
    /// Liveness probe: failing it stops the agent, then the restart policy decides.
    #[serde(default, deserialize_with = "de::startup_or_liveness", skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    /// What happens when the agent ends (merged field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPartial>,
    /// How the agent's work reaches the target branch (merged field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeConfig>,
    /// The task given when a spawn gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// `budget = { tokens, output_tokens, cost, wall, idle, warn_at,
/// on_exceeded }`: an agent's spending limits, unset meaning no limit of
/// that kind; the one type the flags, MCP and the journal also use. Every
/// limit must be greater than 0 and `warn_at` in (0, 1]; `wall` and `idle`
/// are durations; `on_exceeded` is `"stop"` (the default) or `"pause"`.
pub use crate::model::budget::Budget;

/// `sandbox = "read-only" | "workspace-write" | "full"`: what an agent may
/// write, least to most permissive (the one type the harnesses apply).
pub use corral_harness::launch::Sandbox;

/// `network = "none" | "model" | "full"`: what TCP an agent may open,
/// narrowest first.
pub use crate::sys::sandbox::Network;

/// `sandbox_fallback = "refuse" | "warn"`.
pub use crate::sys::sandbox::Fallback as SandboxFallback;

/// `restart = { policy, limit, backoff, max_backoff, reset_after }`:
/// Kubernetes' restart policy with a back-off, as one layer of settings
/// (see `crate::model::restart` for why it is apart from the
/// [`RestartSpec`](crate::model::restart::RestartSpec) it resolves to). An
/// unset `policy` is [`RestartPolicy::Never`], an unset `limit` no limit, and
/// unset timings take `RestartSpec::default()`'s.
pub use crate::model::restart::RestartPartial;

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

/// Whether an agent's work is merged by itself (`--merge` takes the same
/// words).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
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

// A merge gate: `gate = "cargo test"` runs with `sh -c`; `gate = ["cargo",
// "test"]` runs that argv (the one type the merge runs and the journal keeps;
// its deserializer has these spellings and their error messages).
use crate::sys::gate::Gate;

/// What a model costs, in USD per million tokens of each kind. Used for
/// harnesses that report token counts but no cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "de::RawPrice")]
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

// ---------------------------------------------------------------------------
// Loading and layering
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
        let source = Source { path, text };
        let layer: Layer = source.parse()?;
        layer.check(&source)?;
        Ok(Config {
            supervisor: layer.supervisor,
            budget: layer.budget,
            defaults: layer.defaults,
            agents: layer.agents,
            policies: layer.policies,
            prices: layer.prices,
            proxy: layer.proxy,
            sources: vec![path.to_owned()],
        })
    }

    /// Lays `other` on top of `self`: every key `other` sets wins, tables
    /// merge (see the module documentation), and `other`'s sources are
    /// appended.
    pub fn overlay(&mut self, other: &Config) {
        let s = &mut self.supervisor;
        // Named field by field, so a new setting cannot be left out here.
        let SupervisorConfig {
            max_threads,
            max_depth,
            target_branch,
            worktree_root,
            grace,
            worktree_pool,
            progress_interval,
        } = &other.supervisor;
        set(&mut s.max_threads, max_threads);
        set(&mut s.max_depth, max_depth);
        set(&mut s.target_branch, target_branch);
        set(&mut s.worktree_root, worktree_root);
        set(&mut s.grace, grace);
        set(&mut s.worktree_pool, worktree_pool);
        set(&mut s.progress_interval, progress_interval);
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
        self.proxy.overlay(&other.proxy);
        self.sources.extend(other.sources.iter().cloned());
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
    #[serde(default)]
    proxy: ProxySection,
}

impl Layer {
    /// The checks that need more than one value, or a key: each error is
    /// placed on the key, or the value, it is about.
    fn check(&self, source: &Source) -> Result<(), ConfigError> {
        check_agent(&self.defaults).map_err(|(field, message)| source.problem(&["defaults", field], false, message))?;
        for (name, role) in &self.agents {
            validate_name(name).map_err(|err| {
                source.problem(&["agents", name], true, format!("invalid role name: {}", err.message))
            })?;
            check_agent(role).map_err(|(field, message)| source.problem(&["agents", name, field], false, message))?;
        }
        for (prefix, policy) in &self.policies {
            Address::parse(prefix).map_err(|err| source.problem(&["policy", prefix], true, err.message))?;
            check_agent(policy)
                .map_err(|(field, message)| source.problem(&["policy", prefix, field], false, message))?;
        }
        for model in self.prices.keys() {
            if model.trim().is_empty() {
                return Err(source.problem(&["prices", model], true, "the model name is empty".to_owned()));
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
