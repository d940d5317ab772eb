//! Start to first event: from `corral spawn` to the first event corral reads
//! from each real agent CLI's output (Gemini CLI, opencode, Aider; Claude
//! Code and Codex too when installed), against `corral mock-llm` on
//! loopback, measured on the built `corral`.
//!
//! For each CLI, RUNS agents one after another in one scratch repository
//! (one daemon), each `corral spawn NAME --harness H --task "say hi"`
//! answered by a script that says "Hi." for ever. Before the spawn the bench
//! takes the wall clock; afterwards it reads the agent's events: `started`
//! (the CLI's process is running), the first event made of its output
//! (`session_started`, `progress`, `tool_use`, `usage`, `result`), and the
//! first `result` (for Aider, its first answered call). Each figure is the
//! event's `ts` (taken by the daemon as it reads the log) less the clock
//! before the spawn. The anchor: the same for a plain agent (`corral
//! fake-agent "print hi"`, harness `generic`, its first `output` event),
//! which is what corral itself costs; the rest is the CLI starting up.
//!
//! The CLIs come from `CORRAL_<NAME>_BIN`, else from the cache
//! tests/install-agent-clis.sh fills; one that is missing is said so and
//! left out (a bench, not a test). Each gets the offline settings of
//! docs/agents/ (a scratch HOME, no telemetry, no update checks).
//!
//! Run: `cargo bench -p corral --bench first_event`. `CORRAL_BIN`
//! overrides the binary; `FIRST_EVENT_RUNS` the runs per CLI (5).
//!
//! Every command carries `FIRST_EVENT_BENCH_ID=<unique>` in its
//! environment; the daemon, the monitors, the agents and the model server
//! inherit it. At the end, on a panic, or on SIGINT/SIGTERM/SIGHUP, every
//! live process with the marker is killed and the scratch folder removed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

mod common;
use common::{
    corral_bin, corral_command, env_number, expect_json, expect_ok, install_interrupt_cleanup, kill_marked,
    left_behind, load_average, load_is_busy, one_commit_repo, percentile, remove_scratch, scratch_folder,
};

const MARKER: &str = "FIRST_EVENT_BENCH_ID";

/// The event kinds made of a CLI's output.
const OUTPUT_EVENTS: &[&str] = &["session_started", "progress", "tool_use", "tool_result", "usage", "result", "output"];

/// One CLI: its harness, the variable naming its binary and where the
/// cache keeps it (must match tests/install-agent-clis.sh), its model.
struct Cli {
    harness: &'static str,
    variable: &'static str,
    cached: &'static str,
    model: Option<&'static str>,
}

const CLIS: [Cli; 5] = [
    Cli {
        harness: "gemini",
        variable: "CORRAL_GEMINI_BIN",
        cached: "@google+gemini-cli@0.61.0/node_modules/.bin/gemini",
        model: Some("gemini-2.5-flash"),
    },
    Cli {
        harness: "opencode",
        variable: "CORRAL_OPENCODE_BIN",
        cached: "opencode-ai@1.18.33/node_modules/.bin/opencode",
        model: Some("mock/mock-coder"),
    },
    Cli {
        harness: "aider",
        variable: "CORRAL_AIDER_BIN",
        cached: "aider-chat@0.86.2/venv/bin/aider",
        model: Some("openai/gpt-mock"),
    },
    Cli {
        harness: "claude",
        variable: "CORRAL_CLAUDE_BIN",
        cached: "@anthropic-ai+claude-code@2.1.328/node_modules/.bin/claude",
        model: None,
    },
    Cli {
        harness: "codex",
        variable: "CORRAL_CODEX_BIN",
        cached: "@openai+codex@0.169.0/node_modules/.bin/codex",
        model: Some("gpt-mock"),
    },
];

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not spend minutes.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("first_event bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let runs: usize = env_number("FIRST_EVENT_RUNS", 5);
    let bin = corral_bin();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let load_start = load_average();
    let (root, scratch, id) = scratch_folder("corral-first-event-");
    let mut root = Some(root);
    install_interrupt_cleanup("first_event", MARKER, id.clone(), scratch.clone(), || {});
    eprintln!("first_event bench: scratch folder {} (marker {MARKER}={id})", scratch.display());

    let repo = one_commit_repo(&scratch, MARKER, &id);
    let mut mock = MockServer::start(&bin, &repo, &scratch, &id);
    let env = Environments::new(&scratch, &mock.url);

    let mut rows = Vec::new();
    let fake = vec![bin.display().to_string(), "fake-agent".into(), "print hi".into()];
    rows.push((
        "anchor: plain agent".to_string(),
        measure(&bin, &repo, &scratch, &id, "generic", None, &BTreeMap::new(), &fake, runs),
    ));
    for cli in &CLIS {
        let Some(program) = cli_bin(cli) else {
            rows.push((cli.harness.to_string(), Err("not installed (run tests/install-agent-clis.sh)".into())));
            continue;
        };
        let mut vars = env.for_harness(cli.harness);
        vars.insert(cli.variable.to_string(), program.display().to_string());
        let extra = env.extra(cli.harness);
        rows.push((
            cli.harness.to_string(),
            measure(&bin, &repo, &scratch, &id, cli.harness, cli.model, &vars, &extra, runs),
        ));
    }
    let load_end = load_average();

    let _ = corral_command(&bin, &repo, &["shutdown"], &scratch, MARKER, &id).output();
    mock.stop();
    let killed = kill_marked(MARKER, &id);
    let removal = remove_scratch("first_event", &mut root, &scratch);
    let (left_marked, left_in_ps) = left_behind("first_event", MARKER, &id, &scratch);

    let line = "=".repeat(78);
    let mut out = format!("\n{line}\ncorral: start to first event, per agent CLI, against corral mock-llm\n{line}\n");
    out.push_str(&format!("binary            {}\nmachine           {cores} cores\n", bin.display()));
    out.push_str(&format!(
        "load average      at start {load_start}; at end {load_end}{}\n",
        if load_is_busy(&load_start, cores) || load_is_busy(&load_end, cores) {
            "\n                  (the machine was busy: load at or above half the cores; the figures\n\
             \x20                 include that contention and are upper bounds)"
        } else {
            ""
        }
    ));
    out.push_str(&format!("runs              {runs} per CLI, one after another; ms from before `corral spawn`\n"));
    out.push_str(&format!(
        "{:<22}{:>24}{:>24}{:>24}\n",
        "", "started (median/max)", "first event (med/max)", "first result (med/max)"
    ));
    for (label, row) in &rows {
        match row {
            Ok(samples) => {
                let figure = |pick: fn(&Sample) -> Option<f64>| {
                    let mut values: Vec<f64> = samples.iter().filter_map(pick).collect();
                    values.sort_by(f64::total_cmp);
                    if values.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{:.0} / {:.0}", percentile(&values, 50.0), values[values.len() - 1])
                    }
                };
                out.push_str(&format!(
                    "{label:<22}{:>24}{:>24}{:>24}\n",
                    figure(|s| Some(s.started)),
                    figure(|s| s.first_event),
                    figure(|s| s.first_result)
                ));
            }
            Err(why) => out.push_str(&format!("{label:<22}{why}\n")),
        }
    }
    out.push_str(&format!(
        "cleanup           killed {killed} marked processes; removed the scratch folder in {:.1} s\n",
        removal.as_secs_f64()
    ));
    out.push_str(&format!(
        "left behind       {left_marked} processes with the marker, {left_in_ps} in `ps` naming the scratch folder\n{line}\n"
    ));
    print!("{out}");
    if left_marked > 0 || left_in_ps > 0 {
        std::process::exit(1);
    }
}

/// One agent's figures, ms from before its spawn.
struct Sample {
    started: f64,
    first_event: Option<f64>,
    first_result: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
fn measure(
    bin: &Path,
    repo: &Path,
    scratch: &Path,
    id: &str,
    harness: &str,
    model: Option<&str>,
    vars: &BTreeMap<String, String>,
    extra: &[String],
    runs: usize,
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for run in 0..runs {
        let name = format!("{harness}-{run}");
        let mut args = vec!["spawn", &name, "--harness", harness, "--task", "say hi", "--json"];
        if let Some(model) = model {
            args.extend(["--model", model]);
        }
        if !extra.is_empty() {
            args.push("--");
            args.extend(extra.iter().map(String::as_str));
        }
        let mut command = corral_command(bin, repo, &args, scratch, MARKER, id);
        command.envs(vars);
        let before = SystemTime::now();
        let spawn = expect_json(&command.output().expect("corral spawn runs"), "corral spawn");
        let address = spawn["address"].as_str().unwrap_or_default().to_string();
        let wait = corral_command(bin, repo, &["wait", &address, "--timeout", "240"], scratch, MARKER, id).output();
        if !wait.as_ref().is_ok_and(|w| w.status.code() != Some(124)) {
            return Err(format!("{address} did not end in 240 s"));
        }
        let events = expect_ok(
            &corral_command(bin, repo, &["events", "--agent", &address, "--json"], scratch, MARKER, id)
                .output()
                .expect("corral events runs"),
            "corral events",
        );
        let events: Vec<Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let since = |event: &Value| -> Option<f64> {
            let ts = chrono::DateTime::parse_from_rfc3339(event["ts"].as_str()?).ok()?;
            let at = SystemTime::from(ts.with_timezone(&chrono::Utc));
            Some(at.duration_since(before).unwrap_or(Duration::ZERO).as_secs_f64() * 1000.0)
        };
        let first = |kinds: &[&str]| events.iter().find(|e| kinds.iter().any(|k| e["type"] == *k)).and_then(since);
        let Some(started) = first(&["started"]) else { return Err(format!("{address} never started")) };
        samples.push(Sample { started, first_event: first(OUTPUT_EVENTS), first_result: first(&["result"]) });
    }
    Ok(samples)
}

/// `CORRAL_<NAME>_BIN`, else the cache tests/install-agent-clis.sh fills.
fn cli_bin(cli: &Cli) -> Option<PathBuf> {
    let path = match std::env::var_os(cli.variable).filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("CORRAL_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("corral")))
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/corral"));
            cache.join("agent-clis").join(cli.cached)
        }
    };
    path.exists().then_some(path)
}

/// What points each CLI at the model server, offline (docs/agents/).
struct Environments {
    home: PathBuf,
    url: String,
    opencode_config: PathBuf,
    aider_metadata: PathBuf,
    codex_home: PathBuf,
}

impl Environments {
    fn new(scratch: &Path, url: &str) -> Environments {
        let home = scratch.join("home");
        std::fs::create_dir_all(home.join(".gemini")).unwrap();
        std::fs::write(
            home.join(".gemini/settings.json"),
            r#"{"security": {"auth": {"selectedType": "gemini-api-key"}}, "privacy": {"usageStatisticsEnabled": false}}"#,
        )
        .unwrap();
        let plugins = home.join(".config/opencode");
        std::fs::create_dir_all(plugins.join("node_modules")).unwrap();
        std::fs::write(plugins.join("package.json"), r#"{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}"#).unwrap();
        std::fs::write(
            plugins.join("package-lock.json"),
            r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}}}"#,
        )
        .unwrap();
        let opencode_config = scratch.join("opencode.json");
        let config = json!({"autoupdate": false, "share": "disabled", "provider": {"mock": {
            "npm": "@ai-sdk/openai-compatible", "name": "Mock",
            "options": {"baseURL": format!("{url}/v1"), "apiKey": "mock-key"},
            "models": {"mock-coder": {"name": "Mock Coder", "limit": {"context": 128000, "output": 4096}}}}}});
        std::fs::write(&opencode_config, config.to_string()).unwrap();
        let aider_metadata = scratch.join("aider-model-metadata.json");
        let metadata = json!({"openai/gpt-mock": {"max_input_tokens": 128000, "max_output_tokens": 4096,
            "max_tokens": 4096, "litellm_provider": "openai", "mode": "chat"}});
        std::fs::write(&aider_metadata, metadata.to_string()).unwrap();
        let codex_home = scratch.join("codex-home");
        std::fs::create_dir_all(&codex_home).unwrap();
        Environments { home, url: url.to_string(), opencode_config, aider_metadata, codex_home }
    }

    fn for_harness(&self, harness: &str) -> BTreeMap<String, String> {
        let path = |p: &Path| p.display().to_string();
        let mut vars = BTreeMap::from([("HOME".to_string(), path(&self.home))]);
        let pairs: Vec<(&str, String)> = match harness {
            "gemini" => vec![("GOOGLE_GEMINI_BASE_URL", self.url.clone()), ("GEMINI_API_KEY", "mock-key".into())],
            "opencode" => vec![
                ("OPENCODE_CONFIG", path(&self.opencode_config)),
                ("OPENCODE_DISABLE_MODELS_FETCH", "1".into()),
                ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
            ],
            "aider" => vec![
                ("OPENAI_API_BASE", format!("{}/v1", self.url)),
                ("OPENAI_API_KEY", "mock-key".into()),
                ("LITELLM_LOCAL_MODEL_COST_MAP", "True".into()),
                ("AIDER_MODEL_METADATA_FILE", path(&self.aider_metadata)),
                ("TERM", "dumb".into()),
            ],
            "claude" => vec![
                ("ANTHROPIC_BASE_URL", self.url.clone()),
                ("ANTHROPIC_API_KEY", "mock-key".into()),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ],
            "codex" => vec![("CODEX_HOME", path(&self.codex_home)), ("MOCK_KEY", "mock-key".into())],
            _ => Vec::new(),
        };
        vars.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
        vars
    }

    /// Arguments after `--`: Codex's provider.
    fn extra(&self, harness: &str) -> Vec<String> {
        match harness {
            "codex" => vec![
                "-c".into(),
                "model_provider=mock".into(),
                "-c".into(),
                format!(
                    r#"model_providers.mock={{name="mock",base_url="{}/v1",wire_api="responses",env_key="MOCK_KEY"}}"#,
                    self.url
                ),
            ],
            _ => Vec::new(),
        }
    }
}

/// `corral mock-llm` answering "Hi." for ever.
struct MockServer {
    child: Child,
    url: String,
}

impl MockServer {
    fn start(bin: &Path, repo: &Path, scratch: &Path, id: &str) -> MockServer {
        let script = scratch.join("script.json");
        std::fs::write(
            &script,
            r#"{"steps": [{"text": "Hi.", "usage": {"input": 100, "output": 3}, "repeat": "forever"}]}"#,
        )
        .unwrap();
        let script = script.display().to_string();
        let mut child = corral_command(bin, repo, &["mock-llm", "--script", &script], scratch, MARKER, id)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("corral mock-llm starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).expect("mock-llm prints its address");
        let url = first.trim().strip_prefix("mock-llm listening on ").expect("mock-llm's first line").to_string();
        MockServer { child, url }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
