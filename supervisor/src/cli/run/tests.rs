//! The run file's checks and the report's exit code, without a process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::Utc;

use super::file::{parse_var, Overlap, RunFile};
use super::record::{NotRun, RunRecord, RunState, RUN_VERSION};
use super::report::{self, RUN_SKIPPED};
use crate::config::{Config, MergePolicy, MergeStrategy};

fn parse(text: &str) -> Result<RunFile, String> {
    parse_with(text, &Config::default(), &[])
}

fn parse_with(text: &str, config: &Config, vars: &[&str]) -> Result<RunFile, String> {
    let vars: BTreeSet<String> = vars.iter().map(|v| v.to_string()).collect();
    RunFile::parse(text, Path::new("run.toml"), config, &vars).map_err(|e| e.to_string())
}

const GOOD: &str = r#"
name = "nightly"
overlap = "wait"
timeout = "2h"
budget = { tokens = 2_000_000, cost = 10.0 }
merge = { policy = "auto", strategy = "squash" }

[[agent]]
name = "deps"
task = "update the dependencies on {{date}}"
command = ["./fix.sh", "{{run}}", "{{who}}"]

[[agent]]
name = "docs"
harness = "claude"
task = "update the docs"
after = ["deps"]
merge = { strategy = "rebase" }

[[agent]]
name = "lint"
command = ["./scripts/lint.sh"]
merge = "never"
timeout = "5m"
grace = "0s"
"#;

#[test]
fn a_good_file_gives_each_agent_its_settings_and_the_run_its_limits() {
    let file = parse_with(GOOD, &Config::default(), &["who"]).unwrap();
    assert_eq!(file.name, "nightly");
    assert_eq!(file.overlap, Overlap::Wait);
    assert_eq!(file.timeout, Some(std::time::Duration::from_secs(7200)));
    let budget = file.budget.unwrap();
    assert_eq!((budget.tokens, budget.cost), (Some(2_000_000), Some(10.0)));
    assert_eq!(budget.wall, file.timeout, "the timeout is the run's wall budget");
    let [deps, docs, lint] = &file.agents[..] else { panic!("three agents") };
    // The run's merge lies under each agent's own, field by field.
    let merge = docs.settings.merge.as_ref().unwrap();
    assert_eq!((merge.policy, merge.strategy), (Some(MergePolicy::Auto), Some(MergeStrategy::Rebase)));
    assert_eq!(deps.settings.merge.as_ref().unwrap().strategy, Some(MergeStrategy::Squash));
    assert_eq!(lint.settings.merge.as_ref().unwrap().policy, Some(MergePolicy::Never));
    assert_eq!(lint.settings.budget.unwrap().wall, Some(std::time::Duration::from_secs(300)));
    assert_eq!(lint.grace_secs, Some(0.0));
    assert_eq!(docs.settings.harness, Some(corral_harness::Harness::Claude));
    assert_eq!(docs.after, ["deps"]);

    let values: BTreeMap<String, String> =
        [("date", "2026-12-01"), ("run", "nightly-x"), ("who", "me")].map(|(k, v)| (k.into(), v.into())).into();
    let expanded = file.expand(&values);
    assert_eq!(expanded.agents[0].task, "update the dependencies on 2026-12-01");
    assert_eq!(expanded.agents[0].command, ["./fix.sh", "nightly-x", "me"]);

    let levels: Vec<Vec<&str>> =
        file.levels().iter().map(|level| level.iter().map(|a| a.name.as_str()).collect()).collect();
    assert_eq!(levels, [vec!["deps", "lint"], vec!["docs"]]);
}

#[test]
fn the_plan_survives_the_record_it_is_kept_in() {
    let file = parse_with(GOOD, &Config::default(), &["who"]).unwrap();
    let json = serde_json::to_string(&file).unwrap();
    let back: RunFile = serde_json::from_str(&json).unwrap();
    assert_eq!(back, file);
}

/// Each bad file, the line and the words its error must have.
const BAD: &[(&str, &str, &[&str])] = &[
    // The checks corral.toml makes of the same settings.
    (
        "an env name with =",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { \"A=B\" = \"x\" }\n",
        &["run.toml:5:", "agent[0].env", "\"A=B\" is not a valid environment variable name"],
    ),
    (
        "a NUL in an env value",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { A = \"x\\u0000y\" }\n",
        &["run.toml:5:", "agent[0].env", "the value of A holds a NUL byte"],
    ),
    (
        "an empty model",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nmodel = \" \"\n",
        &["run.toml:5:", "agent[0].model", "non-empty name without control characters"],
    ),
    (
        "a NUL in a command word",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\", \"y\\u0000\"]\n",
        &["run.toml:4:", "agent[0].command[1]", "holds a NUL byte"],
    ),
    (
        "a NUL in a task",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\ntask = \"do\\u0000it\"\n",
        &["run.toml:5:", "agent[0].task", "holds a NUL byte"],
    ),
    (
        "unknown key at the top",
        "name = \"n\"\novrlap = \"skip\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n",
        &["run.toml:2:", "unknown key \"ovrlap\"", "expected one of: name, overlap"],
    ),
    (
        "unknown key in an agent",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ntsk = \"x\"\n",
        &["run.toml:4:", "agent[0]", "unknown key \"tsk\""],
    ),
    (
        "a cycle in after",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\nafter = [\"b\"]\n[[agent]]\nname = \"b\"\ncommand = [\"x\"]\nafter = [\"a\"]\n",
        &["run.toml:5:", "agent[0].after", "after makes a cycle: a -> b -> a"],
    ),
    (
        "an unknown name in after",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n\n[[agent]]\nname = \"b\"\ncommand = [\"x\"]\nafter = [\"c\"]\n",
        &["run.toml:9:", "agent[1].after", "unknown agent \"c\""],
    ),
    (
        "two agents of one name",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n[[agent]]\nname = \"a\"\ncommand = [\"y\"]\n",
        &["run.toml:6:", "agent[1].name", "duplicate agent name \"a\"", "line 3"],
    ),
    (
        "a bad duration",
        "name = \"n\"\ntimeout = \"2 hours\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n",
        &["run.toml:2:", "timeout", "bad duration"],
    ),
    (
        "no task and no command",
        "name = \"n\"\n[[agent]]\nname = \"a\"\n",
        &["run.toml:3:", "agent[0]", "no task and no command"],
    ),
    (
        "a plain agent with a task only",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ntask = \"do it\"\n",
        &["run.toml:3:", "agent[0]", "no command"],
    ),
    (
        "a bad overlap",
        "name = \"n\"\noverlap = \"sometimes\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n",
        &["run.toml:2:", "overlap", "unknown value \"sometimes\"", "skip, wait, allow"],
    ),
    (
        "a bad agent name",
        "name = \"n\"\n[[agent]]\nname = \"a/b\"\ncommand = [\"x\"]\n",
        &["run.toml:3:", "agent[0].name", "cannot contain `/`"],
    ),
    (
        "an unknown variable",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\ntask = \"for {{nope}}\"\n",
        &["run.toml:5:", "agent[0].task", "unknown variable {{nope}}", "--var"],
    ),
    (
        "an unknown variable in a command",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\", \"{{nope}}\"]\n",
        &["run.toml:4:", "agent[0].command[1]", "unknown variable {{nope}}"],
    ),
    (
        "an unknown role",
        "name = \"n\"\n[[agent]]\nname = \"a\"\nrole = \"fixer\"\ntask = \"t\"\n",
        &["run.toml:4:", "agent[0].role", "unknown role \"fixer\""],
    ),
    (
        "an unknown harness",
        "name = \"n\"\n[[agent]]\nname = \"a\"\nharness = \"clod\"\ntask = \"t\"\n",
        &["run.toml:4:", "agent[0].harness", "clod"],
    ),
    ("no agents", "name = \"n\"\n", &["run.toml:1:", "agent", "at least one [[agent]]"]),
    (
        "a run name too long",
        "name = \"an-awfully-long-run-name-that-goes-on-and-on\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n",
        &["run.toml:1:", "name", "at most 40 characters"],
    ),
    (
        "a budget that is not positive",
        "name = \"n\"\nbudget = { cost = -1 }\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n",
        &["run.toml:2:", "budget.cost", "greater than 0"],
    ),
    (
        "the wall time twice",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = \"1m\"\nbudget = { wall = \"2m\" }\n",
        &["run.toml:5:", "agent[0].timeout", "once"],
    ),
    (
        "an empty command",
        "name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = []\n",
        &["run.toml:4:", "agent[0].command", "must not be empty"],
    ),
    ("not TOML", "name = \"n\n", &["run.toml:1:"]),
];

#[test]
fn each_bad_file_is_refused_naming_the_line_and_the_key() {
    for (what, text, words) in BAD {
        let err = parse(text).expect_err(what);
        for word in *words {
            assert!(err.contains(word), "{what}: expected {word:?} in {err:?}");
        }
    }
}

#[test]
fn a_role_from_corral_toml_gives_the_task_or_the_command() {
    let config =
        Config::from_str("[agents.fixer]\ntask = \"fix it\"\nargs = [\"./fix.sh\"]\n", Path::new("corral.toml"))
            .unwrap();
    let file = parse_with("name = \"n\"\n[[agent]]\nname = \"a\"\nrole = \"fixer\"\n", &config, &[]).unwrap();
    assert_eq!(file.agents[0].role.as_deref(), Some("fixer"));
}

#[test]
fn vars_are_names_and_values() {
    assert_eq!(parse_var("who=me=you").unwrap(), ("who".into(), "me=you".into()));
    assert!(parse_var("who").unwrap_err().contains("KEY=VALUE"));
    assert!(parse_var("1x=y").unwrap_err().contains("not a variable name"));
    assert!(parse_var("date=today").unwrap_err().contains("built-in"));
}

fn record(state: RunState, not_run: &[(&str, NotRun)]) -> RunRecord {
    let plan = parse("name = \"n\"\n[[agent]]\nname = \"a\"\ncommand = [\"x\"]\n[[agent]]\nname = \"b\"\ncommand = [\"x\"]\nafter = [\"a\"]\n").unwrap();
    RunRecord {
        v: RUN_VERSION,
        run: "n-20261201T030000Z".into(),
        file: "/repo/run.toml".into(),
        address: "/root/n-20261201T030000Z".into(),
        started: Utc::now(),
        ended: None,
        state,
        code: None,
        vars: BTreeMap::new(),
        plan,
        not_run: not_run.iter().map(|(name, why)| (name.to_string(), why.clone())).collect(),
        report: None,
    }
}

#[test]
fn the_exit_code_counts_a_refusal_as_a_failure_and_a_skip_as_nothing() {
    let refused = NotRun::Refused { why: "command not found: x".into(), code: 10 };
    let skipped = NotRun::Skipped { why: "after a, which could not start".into() };
    let report = report::build(&record(RunState::Failed, &[("a", refused), ("b", skipped)]), &[], Utc::now());
    assert_eq!(report.code, 20);
    let states: Vec<&str> = report.agents.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, ["refused", "skipped"]);
    assert_eq!((report.totals.failed, report.totals.skipped), (1, 1));
    assert!(report::render(&report).contains("after a, which could not start"));
}

#[test]
fn a_run_that_ended_before_its_agents_says_how_for_those_it_never_got_to() {
    let stopped = report::build(&record(RunState::Stopped, &[]), &[], Utc::now());
    assert_eq!(stopped.code, 21);
    assert!(stopped.agents.iter().all(|r| r.state == "not_started"));
    assert_eq!(stopped.totals.not_started, 2);
    let timed_out = report::build(&record(RunState::TimedOut, &[]), &[], Utc::now());
    assert_eq!(timed_out.code, 25);
    let skipped = report::build(&record(RunState::Skipped, &[]), &[], Utc::now());
    assert_eq!(skipped.code, RUN_SKIPPED);
    // A run still going: its agents wait, nothing counts yet.
    let going = report::build(&record(RunState::Running, &[]), &[], Utc::now());
    assert_eq!(going.code, 0);
    assert!(going.agents.iter().all(|r| r.state == "waiting"));
    let json = serde_json::to_value(&going).unwrap();
    assert_eq!(json["v"], 1);
    for key in ["name", "address", "state", "exit", "tokens", "cost", "merge", "branch"] {
        assert!(json["agents"][0].get(key).is_some(), "{key} in {json}");
    }
}

#[test]
fn the_example_run_file_is_a_good_one() {
    let text = include_str!("../../../../examples/cron/nightly.toml");
    let file = parse(text).unwrap();
    assert_eq!(file.agents.len(), 3);
    assert_eq!(file.levels().len(), 2);
}
