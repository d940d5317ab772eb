//! The run file of `corral run`: its format, its checks, its variables and
//! the order its agents start in. Pure: it reads nothing but the text it
//! is given (and the corral.toml [`Config`] the caller loaded, for roles).
//!
//! ```toml
//! name = "nightly"       # the run id is nightly-20261201T030000Z; agents live at /root/<run id>/<agent>
//! overlap = "skip"       # a run of this name still going: skip (the default), wait, or allow
//! timeout = "2h"         # the whole run (its driver's wall budget, which covers every agent)
//! budget = { tokens = 2_000_000, cost = 10.0 }   # the whole run's subtree
//! merge = { policy = "auto", strategy = "squash", gate = "cargo test" }   # under each agent's own
//!
//! [[agent]]
//! name = "deps"          # an agent name: letters, digits, `_`, `-`
//! role = "fixer"         # a role of corral.toml; its policies apply too
//! task = "update the dependencies for {{date}}"
//! after = []             # names of agents that must succeed (and merge, when they merge) first
//! harness = "claude"     # and model, command, merge, budget, timeout, grace, sandbox, env
//! ```
//!
//! Every table is closed (an unknown key is an error), and every error
//! names the file, line and key as corral.toml's do (the same helpers:
//! `config::errors`). Beyond what serde checks: the run's name (at most
//! [`MAX_RUN_NAME`] characters, so the run id is an agent name), agent
//! names (valid, unique), `after` (known names, not itself, no cycle),
//! roles (defined in corral.toml), an agent with neither a task nor a
//! command, a plain (generic) agent without a command, a limit given both
//! as `timeout` and as `budget.wall`, `{{variables}}` nobody defines, and
//! a NUL byte in a task or a command word; `model` and `env` are checked
//! by corral.toml's own deserializers (`config::de`).
//!
//! Variables are written `{{name}}` in a task or a command's words: the
//! built-ins ([`BUILTIN_VARIABLES`]) and `--var KEY=VALUE`. They are
//! replaced once, when the run is made ([`RunFile::expand`]), so a resumed
//! run sees the same values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::config::errors::{Segment, Source};
use crate::config::{AgentConfig, Budget, Config, ConfigError, MergeConfig, Sandbox};
use crate::model::address::validate_name;

/// The longest run name: the run id (`NAME-20261201T030000Z`, with a
/// `-N` suffix for a second run in the same second) is an agent name of at
/// most 64 characters.
pub const MAX_RUN_NAME: usize = 40;

/// The variables every run has.
pub const BUILTIN_VARIABLES: [(&str, &str); 5] = [
    ("run", "the run id, nightly-20261201T030000Z"),
    ("name", "the run's name"),
    ("date", "the run's start date (UTC), 2026-12-01"),
    ("time", "the run's start time (UTC), 03:00:00"),
    ("timestamp", "the run's start (UTC), 20261201T030000Z"),
];

/// What a run does when a run of the same name is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Start nothing; exit with the skip code (31).
    #[default]
    Skip,
    /// Start once the other run has ended.
    Wait,
    /// Run alongside it.
    Allow,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Wait => "wait",
            Overlap::Allow => "allow",
        }
    }
}

/// A checked run file (and, once expanded, the plan a run keeps in its
/// record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub name: String,
    pub overlap: Overlap,
    /// The whole run's wall time.
    #[serde(default, with = "crate::model::duration::opt_text", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// The whole run's budget (its subtree's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// In file order.
    pub agents: Vec<RunAgent>,
}

/// One `[[agent]]`, as a spawn takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAgent {
    pub name: String,
    /// Agents that must succeed (and merge, when they merge) first.
    #[serde(default)]
    pub after: Vec<String>,
    /// Empty: the role's task.
    #[serde(default)]
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// As after `--` in `corral spawn`.
    #[serde(default)]
    pub command: Vec<String>,
    /// What the flags of `corral spawn` would give: harness, model,
    /// budget, merge (the run's under the agent's), sandbox, env.
    #[serde(default)]
    pub settings: AgentConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<f64>,
}

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default, deserialize_with = "positive_duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::config::de::budget::deserialize")]
    budget: Option<Budget>,
    #[serde(default)]
    merge: Option<MergeConfig>,
    #[serde(default, rename = "agent")]
    agents: Vec<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default, deserialize_with = "harness")]
    harness: Option<corral_harness::Harness>,
    #[serde(default, deserialize_with = "crate::config::de::name")]
    model: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    merge: Option<MergeConfig>,
    #[serde(default, deserialize_with = "crate::config::de::budget::deserialize")]
    budget: Option<Budget>,
    /// Short for `budget.wall`.
    #[serde(default, deserialize_with = "positive_duration")]
    timeout: Option<Duration>,
    #[serde(default, with = "crate::model::duration::opt_text")]
    grace: Option<Duration>,
    #[serde(default)]
    sandbox: Option<Sandbox>,
    #[serde(default, deserialize_with = "crate::config::de::env")]
    env: Option<BTreeMap<String, String>>,
}

fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let duration = crate::model::duration::opt_text::deserialize(deserializer)?;
    if duration == Some(Duration::ZERO) {
        return Err(de::Error::custom("must be greater than 0, found 0"));
    }
    Ok(duration)
}

fn harness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<corral_harness::Harness>, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse().map(Some).map_err(de::Error::custom)
}

// ---------------------------------------------------------------------------
// Reading and checking
// ---------------------------------------------------------------------------

/// `agent[i].key...` as a path of segments.
fn agent_path(index: usize, keys: &[&str]) -> Vec<Segment> {
    let mut path = vec![Segment::Key("agent".into()), Segment::Index(index)];
    path.extend(keys.iter().map(|key| Segment::Key((*key).to_owned())));
    path
}

impl RunFile {
    /// Parses and checks a run file's text; `path` names it in errors.
    /// `variables` are the names `--var` defines (the built-ins are always
    /// known); `config` is corral.toml, for roles.
    pub fn parse(
        text: &str,
        path: &Path,
        config: &Config,
        variables: &BTreeSet<String>,
    ) -> Result<RunFile, ConfigError> {
        let source = Source { path, text };
        let raw: RawFile = source.parse()?;
        let problem = |keys: &[&str], message: String| source.problem(keys, false, message);
        let at_agent = |index: usize, key: &[&str], at: &[&str], message: String| {
            source.problem_at(&agent_path(index, key), &agent_path(index, at), false, message)
        };

        if let Err(err) = validate_name(&raw.name) {
            return Err(problem(&["name"], err.message.replace("agent name", "run name")));
        }
        if raw.name.chars().count() > MAX_RUN_NAME {
            return Err(problem(
                &["name"],
                format!("a run name has at most {MAX_RUN_NAME} characters (the run id adds a time stamp)"),
            ));
        }
        if raw.agents.is_empty() {
            return Err(problem(&["agent"], "a run needs at least one [[agent]] table".into()));
        }
        if raw.timeout.is_some() && raw.budget.is_some_and(|b| b.wall.is_some()) {
            return Err(problem(&["timeout"], "give the run's wall time once: timeout or budget.wall".into()));
        }
        if let Some(budget) = &raw.budget {
            budget.validate().map_err(|why| problem(&["budget"], why))?;
        }

        let known: BTreeSet<&str> =
            BUILTIN_VARIABLES.iter().map(|(name, _)| *name).chain(variables.iter().map(String::as_str)).collect();
        let mut first_of: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, agent) in raw.agents.iter().enumerate() {
            if let Err(err) = validate_name(&agent.name) {
                return Err(at_agent(index, &["name"], &["name"], err.message));
            }
            if let Some(first) = first_of.insert(&agent.name, index) {
                let (line, _) = errors_line(&source, first);
                return Err(at_agent(
                    index,
                    &["name"],
                    &["name"],
                    format!("duplicate agent name {:?} (agent[{first}], line {line}, has it too)", agent.name),
                ));
            }
        }
        for (index, agent) in raw.agents.iter().enumerate() {
            if agent.command.as_ref().is_some_and(Vec::is_empty) {
                return Err(at_agent(index, &["command"], &["command"], "must not be empty".into()));
            }
            if agent.timeout.is_some() && agent.budget.is_some_and(|b| b.wall.is_some()) {
                let message = "give the agent's wall time once: timeout or budget.wall".into();
                return Err(at_agent(index, &["timeout"], &["timeout"], message));
            }
            if let Some(budget) = &agent.budget {
                budget.validate().map_err(|why| at_agent(index, &["budget"], &["budget"], why))?;
            }
            let role = match &agent.role {
                Some(name) => match config.agents.get(name) {
                    Some(role) => Some(role),
                    None => {
                        let known = ConfigError::UnknownRole {
                            role: name.clone(),
                            known: config.agents.keys().cloned().collect(),
                        };
                        return Err(at_agent(index, &["role"], &["role"], known.to_string()));
                    }
                },
                None => None,
            };
            // What the spawn will resolve: corral.toml's defaults, policies
            // and role, then the file's own settings.
            let resolved = config
                .resolve(&format!("/root/{}/{}", raw.name, agent.name), agent.role.as_deref())
                .unwrap_or_else(|_| role.cloned().unwrap_or_default());
            let harness = agent.harness.or(resolved.harness).unwrap_or_default();
            let has_task = agent.task.as_ref().is_some_and(|t| !t.trim().is_empty()) || resolved.task.is_some();
            let has_command = agent.command.is_some() || resolved.args.is_some();
            if !has_task && !has_command {
                let message = "no task and no command: give the agent a task, a command, or both".into();
                return Err(at_agent(index, &[], &["name"], message));
            }
            if harness == corral_harness::Harness::Generic && !has_command {
                let message = "no command: a plain agent (no harness) runs `command = [\"program\", ...]`".into();
                return Err(at_agent(index, &[], &["name"], message));
            }
            for dep in &agent.after {
                if dep == &agent.name {
                    return Err(at_agent(index, &["after"], &["after"], format!("{dep:?} cannot run after itself")));
                }
                if !first_of.contains_key(dep.as_str()) {
                    let names: Vec<&str> = raw.agents.iter().map(|a| a.name.as_str()).collect();
                    let message = format!("unknown agent {dep:?} (the agents are: {})", names.join(", "));
                    return Err(at_agent(index, &["after"], &["after"], message));
                }
            }
            if let Some(task) = &agent.task {
                no_nul(task)
                    .and_then(|()| check_variables(task, &known))
                    .map_err(|why| at_agent(index, &["task"], &["task"], why))?;
            }
            for (word, text) in agent.command.iter().flatten().enumerate() {
                no_nul(text).and_then(|()| check_variables(text, &known)).map_err(|why| {
                    let key = [agent_path(index, &["command"]), vec![Segment::Index(word)]].concat();
                    source.problem_at(&key, &agent_path(index, &["command"]), false, why)
                })?;
            }
        }
        let names: Vec<&str> = raw.agents.iter().map(|a| a.name.as_str()).collect();
        let after: Vec<&[String]> = raw.agents.iter().map(|a| a.after.as_slice()).collect();
        if let Some(cycle) = find_cycle(&names, &after) {
            let names: Vec<&str> = cycle.iter().map(|&i| raw.agents[i].name.as_str()).collect();
            let message = format!("after makes a cycle: {}", names.join(" -> "));
            return Err(at_agent(cycle[0], &["after"], &["after"], message));
        }

        let agents = raw.agents.into_iter().map(|agent| into_run_agent(agent, raw.merge.as_ref())).collect();
        let mut budget = raw.budget;
        if let Some(timeout) = raw.timeout {
            budget.get_or_insert_with(Budget::default).wall = Some(timeout);
        }
        let timeout = budget.and_then(|b| b.wall);
        Ok(RunFile { name: raw.name, overlap: raw.overlap, timeout, budget, agents })
    }

    /// The file with every `{{variable}}` replaced by its value (the
    /// built-ins and `--var`s, which [`RunFile::parse`] checked).
    pub fn expand(&self, values: &BTreeMap<String, String>) -> RunFile {
        let mut file = self.clone();
        for agent in &mut file.agents {
            agent.task = substitute(&agent.task, values);
            for word in &mut agent.command {
                *word = substitute(word, values);
            }
        }
        file
    }

    /// The agents in the order they can start: each level's agents need
    /// only those of earlier levels (file order within a level).
    pub fn levels(&self) -> Vec<Vec<&RunAgent>> {
        let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
        let mut levels: Vec<Vec<&RunAgent>> = Vec::new();
        while placed.len() < self.agents.len() {
            let ready: Vec<&RunAgent> = self
                .agents
                .iter()
                .filter(|a| !placed.contains_key(a.name.as_str()))
                .filter(|a| a.after.iter().all(|dep| placed.contains_key(dep.as_str())))
                .collect();
            if ready.is_empty() {
                break; // A cycle; parse refuses those.
            }
            for agent in &ready {
                placed.insert(&agent.name, levels.len());
            }
            levels.push(ready);
        }
        levels
    }
}

/// The line of `agent[index].name`, for pointing at a first occurrence.
fn errors_line(source: &Source, index: usize) -> (usize, usize) {
    match source.problem_at(&[], &agent_path(index, &["name"]), false, String::new()) {
        ConfigError::Invalid { line, column, .. } => (line, column),
        _ => (1, 1),
    }
}

fn into_run_agent(raw: RawAgent, run_merge: Option<&MergeConfig>) -> RunAgent {
    let merge = match (run_merge, raw.merge) {
        (None, None) => None,
        (base, own) => {
            let mut merge = base.cloned().unwrap_or_default();
            if let Some(own) = &own {
                merge.overlay(own);
            }
            Some(merge)
        }
    };
    let mut budget = raw.budget;
    if let Some(timeout) = raw.timeout {
        budget.get_or_insert_with(Budget::default).wall = Some(timeout);
    }
    let settings = AgentConfig {
        harness: raw.harness,
        model: raw.model,
        budget,
        merge,
        sandbox: raw.sandbox,
        env: raw.env,
        ..AgentConfig::default()
    };
    RunAgent {
        name: raw.name,
        after: raw.after,
        task: raw.task.unwrap_or_default(),
        role: raw.role,
        command: raw.command.unwrap_or_default(),
        settings,
        grace_secs: raw.grace.map(|g| g.as_secs_f64()),
    }
}

/// A cycle in `after` (indexes into `names`, the first repeated at the
/// end), if there is one. Every name in `after` is one of `names`.
fn find_cycle(names: &[&str], after: &[&[String]]) -> Option<Vec<usize>> {
    fn visit(at: usize, edges: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[at] = 1; // on the path
        path.push(at);
        for &next in &edges[at] {
            match state[next] {
                1 => {
                    let start = path.iter().position(|&i| i == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state[at] = 2; // done: no cycle through it
        None
    }
    let edges: Vec<Vec<usize>> =
        after.iter().map(|deps| deps.iter().filter_map(|dep| names.iter().position(|n| n == dep)).collect()).collect();
    let mut state = vec![0u8; names.len()];
    (0..names.len()).find_map(|start| match state[start] {
        0 => visit(start, &edges, &mut state, &mut Vec::new()),
        _ => None,
    })
}

// ---------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------

/// The names used in `text` as `{{name}}`, or why the text is malformed.
fn variables_in(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!("{{{{ without }}}} in {text:?}"));
        };
        names.push(after[..close].trim().to_owned());
        rest = &after[close + 2..];
    }
    Ok(names)
}

/// A task or a command word goes into an argument or a variable of the
/// agent's process, which cannot hold a NUL byte.
fn no_nul(text: &str) -> Result<(), String> {
    match text.find('\0') {
        Some(at) => Err(format!("holds a NUL byte (at byte {at}), which no command line or environment can carry")),
        None => Ok(()),
    }
}

fn check_variables(text: &str, known: &BTreeSet<&str>) -> Result<(), String> {
    for name in variables_in(text)? {
        if !known.contains(name.as_str()) {
            let mut all: Vec<&str> = known.iter().copied().collect();
            all.sort_unstable();
            return Err(format!(
                "unknown variable {{{{{name}}}}} (known: {}; define more with --var KEY=VALUE)",
                all.join(", ")
            ));
        }
    }
    Ok(())
}

/// `text` with each `{{name}}` replaced by its value (unknown names stay).
fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        out.push_str(&rest[..open]);
        let name = after[..close].trim();
        match values.get(name) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// `--var KEY=VALUE`: the key is a variable name (letters, digits, `_`,
/// not starting with a digit) and not a built-in.
pub fn parse_var(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("--var {text:?}: write KEY=VALUE"));
    };
    let good = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !good {
        return Err(format!("--var {text:?}: {key:?} is not a variable name (letters, digits, _)"));
    }
    if BUILTIN_VARIABLES.iter().any(|(name, _)| *name == key) {
        return Err(format!("--var {text:?}: {key} is a built-in variable"));
    }
    Ok((key.to_owned(), value.to_owned()))
}
