//! The unit tests of `config`: parsing, layering, resolving, and the
//! position and key of every kind of error.

use corral_harness::Harness;

use super::errors::line_column;
use super::*;
use crate::model::budget::OnExceeded;
use crate::model::duration::parse_duration;
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
worktree_pool = 3
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
budget = { tokens = 400_000, output_tokens = 50_000, cost = 2.5, wall = "30m", idle = "5m", warn_at = 0.9, on_exceeded = "pause" }
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
            worktree_pool: Some(3),
            progress_interval: None,
        }
    );
    assert_eq!(config.budget, RepoBudget { daily_tokens: Some(5_000_000), daily_cost: Some(20.0), warn_at: Some(0.8) });
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
        harness: Some(Harness::Claude),
        model: Some("claude-sonnet-4-5".into()),
        reasoning_effort: Some("high".into()),
        args: Some(vec!["--max-turns".into(), "20".into()]),
        env: Some(BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())])),
        sandbox: Some(Sandbox::ReadOnly),
        notify: None,
        budget: Some(Budget {
            tokens: Some(400_000),
            output_tokens: Some(50_000),
            cost: Some(2.5),
            wall: Some(Duration::from_secs(1800)),
            idle: Some(Duration::from_secs(300)),
            warn_at: Some(0.9),
            on_exceeded: Some(OnExceeded::Pause),
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
        restart: Some(RestartPartial {
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
        ..AgentConfig::default()
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
    assert_eq!(reviewer.harness, Some(Harness::Claude));
    assert_eq!(reviewer.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(
        reviewer.env,
        Some(BTreeMap::from([("A".to_owned(), "user".to_owned()), ("B".to_owned(), "repo".to_owned())]))
    );
    assert_eq!(reviewer.budget, Some(Budget { tokens: Some(200), cost: Some(1.0), ..Budget::default() }));
    assert_eq!(config.agents["mine"].harness, Some(Harness::Aider));
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
    let expected =
        format!("{}:2:13: supervisor.max_depth: must be greater than 0, found 0", dir.path().join(REPO_FILE).display());
    assert_eq!(message, expected);
}

#[test]
fn the_user_file_is_under_the_xdg_config_folder() {
    let path = |xdg: Option<&str>, home: Option<&str>| user_config_path_from(xdg.map(Into::into), home.map(Into::into));
    assert_eq!(path(Some("/x"), Some("/home/u")), Some(PathBuf::from("/x/corral/config.toml")));
    assert_eq!(path(None, Some("/home/u")), Some(PathBuf::from("/home/u/.config/corral/config.toml")));
    assert_eq!(path(Some("relative"), Some("/home/u")), Some(PathBuf::from("/home/u/.config/corral/config.toml")));
    assert_eq!(path(Some(""), None), None);
}

#[test]
fn overlay_lets_set_fields_win_and_merges_budgets() {
    let mut base = AgentConfig {
        harness: Some(Harness::Claude),
        model: Some("a".into()),
        args: Some(vec!["--x".into()]),
        budget: Some(Budget { tokens: Some(10), cost: Some(1.0), ..Budget::default() }),
        restart: Some(RestartPartial { policy: Some(RestartPolicy::OnFailure), ..RestartPartial::default() }),
        readiness: Some(ProbeSpec::new(ProbeKind::Event("init".into()))),
        ..AgentConfig::default()
    };
    let flags = AgentConfig {
        model: Some("b".into()),
        args: Some(vec![]),
        budget: Some(Budget { tokens: Some(5), wall: Some(Duration::from_secs(60)), ..Budget::default() }),
        restart: Some(RestartPartial { limit: Some(2), ..RestartPartial::default() }),
        ..AgentConfig::default()
    };
    base.overlay(&flags);
    assert_eq!(base.harness, Some(Harness::Claude));
    assert_eq!(base.model.as_deref(), Some("b"));
    assert_eq!(base.args, Some(vec![]));
    assert_eq!(
        base.budget,
        Some(Budget { tokens: Some(5), cost: Some(1.0), wall: Some(Duration::from_secs(60)), ..Budget::default() })
    );
    assert_eq!(
        base.restart,
        Some(RestartPartial { policy: Some(RestartPolicy::OnFailure), limit: Some(2), ..RestartPartial::default() })
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
    assert_eq!(review.harness, Some(Harness::Claude));
    assert_eq!(review.sandbox, Some(Sandbox::ReadOnly));
    assert_eq!(review.model.as_deref(), Some("review-model"));
    assert_eq!(review.reasoning_effort.as_deref(), Some("high"));
    assert_eq!(
        review.budget,
        Some(Budget { tokens: Some(100), cost: Some(1.5), wall: Some(Duration::from_secs(3600)), ..Budget::default() })
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
        "corral.toml:4:2: unknown key \"supervisr\" (expected one of: supervisor, budget, defaults, agents, policy, prices, proxy)"
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
        "corral.toml:6:1: agents.reviewer.budget: unknown key \"tokns\" (expected one of: tokens, output_tokens, cost, wall, idle, warn_at, on_exceeded)"
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
    let message = error("[agents.a]\nharness = \"claude\"\nbudget = { idle = \"5x\" }\n", 3, "agents.a.budget.idle");
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
        message
            .ends_with(": agents.a.readiness.log_line: invalid regex \"(\": regex parse error: error: unclosed group"),
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

#[test]
fn the_proxy_table_takes_an_upstream_and_a_key_file_per_provider_and_names_a_bad_one() {
    let text = "[proxy.anthropic]\nupstream = \"https://gw.example/anthropic/\"\nkey_file = \"/etc/corral/a.key\"\n\n[proxy.openai]\nupstream = \"http://127.0.0.1:8080/v1\"\n";
    let config = Config::from_str(text, Path::new("corral.toml")).unwrap();
    let anthropic = config.proxy.anthropic.as_ref().unwrap();
    assert_eq!(anthropic.upstream.as_deref(), Some("https://gw.example/anthropic"), "one trailing slash dropped");
    assert_eq!(anthropic.key_file.as_deref(), Some(Path::new("/etc/corral/a.key")));
    assert_eq!(config.proxy.openai.as_ref().unwrap().upstream.as_deref(), Some("http://127.0.0.1:8080/v1"));
    assert!(config.proxy.gemini.is_none());
    // The repository's file overrides the user's key by key.
    let mut layered = Config::from_str(text, Path::new("user.toml")).unwrap();
    layered.overlay(
        &Config::from_str("[proxy.anthropic]\nupstream = \"https://other.example\"\n", Path::new("corral.toml"))
            .unwrap(),
    );
    let anthropic = layered.proxy.anthropic.as_ref().unwrap();
    assert_eq!(anthropic.upstream.as_deref(), Some("https://other.example"));
    assert_eq!(anthropic.key_file.as_deref(), Some(Path::new("/etc/corral/a.key")));

    let message = error("[proxy.anthropic]\nupstream = \"gw.example\"\n", 2, "proxy.anthropic.upstream");
    assert!(message.contains("must be an http:// or https:// base URL"), "{message}");
    let message = error("[proxy.anthropic]\nkey_file = \"a.key\"\n", 2, "proxy.anthropic.key_file");
    assert!(message.contains("must be an absolute path"), "{message}");
    let message = error("[proxy.mistral]\nupstream = \"https://x\"\n", 1, "proxy");
    assert!(message.contains("unknown key \"mistral\""), "{message}");
}
