//! Every real sample in `tests/fixtures/agent-output/` (see SOURCES.md
//! there) fed through its parser, with the totals worked out by hand from
//! the JSON: the arithmetic is written beside each assertion.

use std::path::PathBuf;

use corral_harness::event::{parser_for, HarnessEvent, Parser, TokenUsage, UsageTotals};

/// The package folder, read when the test runs (cargo sets it): a test
/// binary reused from a cargo target folder shared with another checkout
/// would otherwise read that checkout's files, or none.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixtures() -> PathBuf {
    manifest_dir().join("tests/fixtures/agent-output")
}

/// Every fixture this file tests, and the harness that reads it.
const TESTED: [(&str, &str); 17] = [
    ("aider-0.86.2-corral-edit-and-two-messages.txt", "aider"),
    ("aider-stdout-1.txt", "aider"),
    ("claude-stream-json-1.ndjson", "claude"),
    ("claude-stream-json-3-real-session-ccagent.ndjson", "claude"),
    ("claude-stream-json-5-result-modelUsage.json", "claude"),
    ("claude-stream-json-6-partial-messages-2.1.205.ndjson", "claude"),
    ("claude-stream-json-7-subagent-2.1.235.ndjson", "claude"),
    ("claude-stream-json-8-error_during_execution-old.ndjson", "claude"),
    ("codex-exec-json-1.jsonl", "codex"),
    ("gemini-0.61.0-corral-write-file.jsonl", "gemini"),
    ("gemini-0.61.0-error-400.jsonl", "gemini"),
    ("gemini-0.61.0-sigterm-midstream.jsonl", "gemini"),
    ("gemini-stream-json-1.jsonl", "gemini"),
    ("gemini-stream-json-2-result.jsonl", "gemini"),
    ("opencode-1.18.33-corral-write.jsonl", "opencode"),
    ("opencode-1.18.33-run-error-400.jsonl", "opencode"),
    ("opencode-run-json-1.jsonl", "opencode"),
];

fn path(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The fixture's lines as the monitor hands them over: split on `\n`,
/// without a trailing `\r`.
fn lines(name: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path(name)).unwrap_or_else(|e| panic!("read fixture {name}: {e}"));
    let mut lines: Vec<Vec<u8>> =
        bytes.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec()).collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// All events of a fixture, and the parser's totals after it.
fn run(harness: &str, name: &str) -> (Vec<HarnessEvent>, UsageTotals) {
    let mut parser: Box<dyn Parser> = parser_for(harness).expect("known harness");
    let mut events = Vec::new();
    for line in lines(name) {
        events.extend(parser.feed_line(&line));
    }
    (events, parser.totals())
}

fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
    TokenUsage { input, output, cache_read, cache_write }
}

fn tool_names(events: &[HarnessEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            HarnessEvent::ToolUse { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

fn tool_results(events: &[HarnessEvent]) -> Vec<(Option<&str>, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            HarnessEvent::ToolResult { id, is_error, .. } => Some((id.as_deref(), *is_error)),
            _ => None,
        })
        .collect()
}

fn progress(events: &[HarnessEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            HarnessEvent::Progress { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn results(events: &[HarnessEvent]) -> Vec<&HarnessEvent> {
    events.iter().filter(|e| matches!(e, HarnessEvent::Result { .. })).collect()
}

fn sessions(events: &[HarnessEvent]) -> Vec<(Option<&str>, Option<&str>)> {
    events
        .iter()
        .filter_map(|e| match e {
            HarnessEvent::SessionStarted { session_id, model } => Some((session_id.as_deref(), model.as_deref())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_fixture_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures folder beside the repository")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SOURCES.md")
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|(n, _)| n.to_string()).collect();
    tested.sort();
    assert_eq!(on_disk, tested, "a fixture without a test, or a test without its fixture");
}

#[test]
fn claude_1_basic_query() {
    let (events, totals) = run("claude", "claude-stream-json-1.ndjson");
    assert_eq!(
        sessions(&events),
        vec![(Some("1d1e46f9-35c7-4834-b529-846d5bb82288"), Some("claude-opus-4-5-20251101"))]
    );
    assert_eq!(progress(&events), vec!["4"]);
    // Live, from the one assistant line (msg_01Y1...): input 10, output 5
    // (start-of-message snapshot), cache read 0, cache creation 21570.
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(10, 5, 0, 21570),
        total: t(10, 5, 0, 21570),
        cost_usd: None,
        settled: false
    }));
    // Settled on the result line (no modelUsage, so `usage`): input 10,
    // output 25, cache read 0, cache creation 21570; cost 0.1354875.
    // Delta from live: output 25 - 5 = 20, the rest 0.
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(0, 20, 0, 0),
        total: t(10, 25, 0, 21570),
        cost_usd: Some(0.1354875),
        settled: true
    }));
    assert_eq!(totals.tokens, t(10, 25, 0, 21570));
    assert_eq!(totals.cost_usd, Some(0.1354875));
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: true,
            reason: None,
            text: Some("4".into()),
            session_id: Some("1d1e46f9-35c7-4834-b529-846d5bb82288".into())
        }]
    );
}

#[test]
fn claude_3_real_session_dedupes_live_usage_and_settles() {
    let name = "claude-stream-json-3-real-session-ccagent.ndjson";
    let all = lines(name);
    let mut parser = parser_for("claude").unwrap();
    let mut events = Vec::new();
    for line in &all[..all.len() - 1] {
        events.extend(parser.feed_line(line));
    }
    // Live, before the result line: one count per message id. Eleven ids
    // (lines 9/10, 12/13 and 17/18 are two content blocks of one message
    // each, with the same usage repeated):
    //   msg_01FTP88 (2, 1, 60137, 966)   msg_01PpgbU (6, 177, 61103, 1673)
    //   msg_012VLHZ (5, 18, 62776, 220)  msg_01MnwZJ (5, 177, 62996, 4856)
    //   msg_015UQ5m (5, 1, 67852, 219)   msg_01799ZE (5, 1, 68071, 2822)
    //   msg_011w2x9 (4, 26, 70893, 2885) msg_01PfkmG (4, 1, 73778, 219)
    //   msg_01KiFUL (4, 25, 73997, 164)  msg_011xNR8 (4, 175, 74161, 271)
    //   msg_013n93b (4, 1, 74432, 217)
    // input  2+6+5+5+5+5+4+4+4+4+4 = 48
    // output 1+177+18+177+1+1+26+1+25+175+1 = 603 (a lower bound)
    // cache read 60137+61103+62776+62996+67852+68071+70893+73778+73997
    //            +74161+74432 = 750196
    // cache creation 966+1673+220+4856+219+2822+2885+219+164+271+217 = 14512
    assert_eq!(parser.totals().tokens, t(48, 603, 750196, 14512));
    assert_eq!(parser.totals().cost_usd, None);

    let last = parser.feed_line(&all[all.len() - 1]);
    // Result: modelUsage haiku all 0 + sonnet (48, 4371, 750196, 14512);
    // cost 0.3451878. Only the output differed from live: 4371 - 603 = 3768.
    assert_eq!(
        last[0],
        HarnessEvent::Usage {
            delta: t(0, 3768, 0, 0),
            total: t(48, 4371, 750196, 14512),
            cost_usd: Some(0.3451878),
            settled: true
        }
    );
    assert_eq!(parser.totals().tokens, t(48, 4371, 750196, 14512));
    assert_eq!(parser.totals().cost_usd, Some(0.3451878));
    match &last[1] {
        HarnessEvent::Result { success, reason, text, session_id } => {
            assert!(success);
            assert_eq!(reason, &None);
            assert!(text.as_deref().unwrap().starts_with("Perfect! I've updated the BlueSky section"));
            assert_eq!(session_id.as_deref(), Some("3fef54b1-0b2f-4ef9-89a7-928aed9f993f"));
        }
        other => panic!("expected a Result, got {other:?}"),
    }
    events.extend(last);

    assert_eq!(
        sessions(&events),
        vec![(Some("3fef54b1-0b2f-4ef9-89a7-928aed9f993f"), Some("claude-sonnet-4-5-20250929"))]
    );
    // Tool uses in order: lines 2, 3, 5, 7, 10, 13, 15, 18, 20, 22.
    assert_eq!(
        tool_names(&events),
        vec!["Read", "TodoWrite", "Read", "TodoWrite", "Edit", "Edit", "TodoWrite", "Bash", "Bash", "TodoWrite"]
    );
    assert!(events.contains(&HarnessEvent::ToolUse {
        id: Some("toolu_01A8ziFridA9zfRrb37riiBJ".into()),
        name: "Bash".into(),
        summary: "python3 .claude/skills/newsletter-creation/tools/render_newsletter.py \
                  /tmp/newsletter_data_pmihaylov95.json /tmp/newsletter_bluesky_test.html"
            .into()
    }));
    // Nine tool results (the image result of the first Read was dropped
    // from the fixture), none an error.
    let results = tool_results(&events);
    assert_eq!(results.len(), 9);
    assert!(results.iter().all(|(_, is_error)| !is_error));
    assert_eq!(results[0].0, Some("toolu_015D3EayDCxoRydxUTGkGEzN"));
}

#[test]
fn claude_5_result_model_usage_summed_across_models() {
    let (events, totals) = run("claude", "claude-stream-json-5-result-modelUsage.json");
    // modelUsage: haiku (3774 in, 191 out, 0 read, 0 creation)
    //           + sonnet (29 in, 656 out, 112686 read, 23106 creation)
    // = input 3774+29 = 3803, output 191+656 = 847, read 112686, creation 23106.
    // (`usage` alone would say 29 in / 656 out: the main model only.)
    assert_eq!(totals.tokens, t(3803, 847, 112686, 23106));
    // total_cost_usd 0.1351093 (= 0.004729 + 0.1303803 per model).
    assert_eq!(totals.cost_usd, Some(0.1351093));
    assert_eq!(
        events[0],
        HarnessEvent::Usage {
            delta: t(3803, 847, 112686, 23106),
            total: t(3803, 847, 112686, 23106),
            cost_usd: Some(0.1351093),
            settled: true
        }
    );
    match &events[1] {
        HarnessEvent::Result { success, reason, text, session_id } => {
            assert!(success);
            assert_eq!(reason, &None);
            assert!(text.as_deref().unwrap().starts_with("Task completed successfully!"));
            assert_eq!(session_id.as_deref(), Some("dc93aac8-fe7f-4d4a-83ef-2bd2c070444e"));
        }
        other => panic!("expected a Result, got {other:?}"),
    }
    assert_eq!(events.len(), 2);
}

#[test]
fn claude_6_partial_messages() {
    let (events, totals) = run("claude", "claude-stream-json-6-partial-messages-2.1.205.ndjson");
    assert_eq!(sessions(&events), vec![(Some("16c61d1b-fe47-4d2a-a97a-fdea9213ac86"), Some("claude-fable-5"))]);
    // No line carries token usage (the assistant line and the result have
    // none): tokens stay 0; the result's total_cost_usd is 0.655998.
    assert_eq!(totals.tokens, t(0, 0, 0, 0));
    assert_eq!(totals.cost_usd, Some(0.655998));
    // The text/thinking deltas are not repeated as progress.
    assert!(progress(&events).is_empty());
    assert_eq!(
        events.iter().filter(|e| matches!(e, HarnessEvent::ToolUse { .. })).collect::<Vec<_>>(),
        vec![&HarnessEvent::ToolUse {
            id: Some("toolu_01M38CzXbA7gWUhWz4BCRZfM".into()),
            name: "Read".into(),
            summary: "/home/user/vault/hello.txt".into()
        }]
    );
    // Two results for the same tool use: the second has is_error true.
    assert_eq!(
        tool_results(&events),
        vec![(Some("toolu_01M38CzXbA7gWUhWz4BCRZfM"), false), (Some("toolu_01M38CzXbA7gWUhWz4BCRZfM"), true)]
    );
    assert!(events.contains(&HarnessEvent::ToolResult {
        id: Some("toolu_01M38CzXbA7gWUhWz4BCRZfM".into()),
        is_error: true,
        summary: "File does not exist.".into()
    }));
    // Cost-only result: not settled tokens; cost 0.655998.
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(0, 0, 0, 0),
        total: t(0, 0, 0, 0),
        cost_usd: Some(0.655998),
        settled: false
    }));
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: true,
            reason: None,
            text: Some("Contents: `hi from file`".into()),
            session_id: Some("16c61d1b-fe47-4d2a-a97a-fdea9213ac86".into())
        }]
    );
}

#[test]
fn claude_7_sub_agent_lines() {
    let (events, totals) = run("claude", "claude-stream-json-7-subagent-2.1.235.ndjson");
    // No usage on any line, no init, no result.
    assert_eq!(totals, UsageTotals::default());
    assert!(sessions(&events).is_empty());
    assert!(results(&events).is_empty());
    // The sub-agent's text (parent_tool_use_id set) and the parent's text.
    assert_eq!(progress(&events), vec!["4", "done"]);
}

#[test]
fn claude_8_error_during_execution() {
    let (events, totals) = run("claude", "claude-stream-json-8-error_during_execution-old.ndjson");
    assert_eq!(
        sessions(&events),
        vec![(Some("79fac4e0-79bd-4489-afb5-6023fa22cc47"), Some("claude-sonnet-4-20250514"))]
    );
    // Live: assistant msg_01HCL8 (4 in, 3 out, 0 read, 16747 creation).
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(4, 3, 0, 16747),
        total: t(4, 3, 0, 16747),
        cost_usd: None,
        settled: false
    }));
    // Settled on the result's `usage` (no modelUsage in this old CLI):
    // 337 in, 4075 out, 286445 read, 33704 creation; cost 0.21045915.
    // Delta: 337-4 = 333, 4075-3 = 4072, 286445-0, 33704-16747 = 16957.
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(333, 4072, 286445, 16957),
        total: t(337, 4075, 286445, 33704),
        cost_usd: Some(0.21045915),
        settled: true
    }));
    assert_eq!(totals.tokens, t(337, 4075, 286445, 33704));
    assert_eq!(totals.cost_usd, Some(0.21045915));
    // subtype error_during_execution (with is_error false) is a failure.
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: false,
            reason: Some("error_during_execution".into()),
            text: None,
            session_id: Some("79fac4e0-79bd-4489-afb5-6023fa22cc47".into())
        }]
    );
}

#[test]
fn codex_1_exec_json() {
    let (events, totals) = run("codex", "codex-exec-json-1.jsonl");
    assert_eq!(sessions(&events), vec![(Some("0199a213-81c0-7800-8aa1-bbab2a035a53"), None)]);
    // turn.completed usage: input_tokens 24763 of which cached 24448,
    // output 122: input 24763 - 24448 = 315, cache read 24448, output 122.
    // Codex reports no cost.
    assert_eq!(totals.tokens, t(315, 122, 24448, 0));
    assert_eq!(totals.cost_usd, None);
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(315, 122, 24448, 0),
        total: t(315, 122, 24448, 0),
        cost_usd: None,
        settled: true
    }));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, HarnessEvent::ToolUse { .. } | HarnessEvent::ToolResult { .. }))
            .collect::<Vec<_>>(),
        vec![
            &HarnessEvent::ToolUse {
                id: Some("item_1".into()),
                name: "command_execution".into(),
                summary: "bash -lc ls".into()
            },
            &HarnessEvent::ToolResult {
                id: Some("item_1".into()),
                is_error: false,
                // "exit 0: " and the 21 names of aggregated_output on one
                // line make 216 chars: cut to 199 plus "…".
                summary: "exit 0: 2025-09-11 AGENTS.md CHANGELOG.md cliff.toml codex-cli \
                          codex-rs docs examples flake.lock flake.nix LICENSE node_modules \
                          NOTICE package.json pnpm-lock.yaml pnpm-workspace.yaml PNPM.md \
                          README.m…"
                    .into()
            }
        ]
    );
    // Two reasoning items and the agent message.
    assert_eq!(
        progress(&events),
        vec![
            "**Searching for README files**",
            "**Checking repository root for README**",
            "Yep — there’s a `README.md` in the repository root."
        ]
    );
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: true,
            reason: None,
            text: Some("Yep — there’s a `README.md` in the repository root.".into()),
            session_id: Some("0199a213-81c0-7800-8aa1-bbab2a035a53".into())
        }]
    );
}

#[test]
fn gemini_1_total_only() {
    let (events, totals) = run("gemini", "gemini-stream-json-1.jsonl");
    assert_eq!(sessions(&events), vec![(Some("sess-1"), Some("gemini-3.1-pro-preview"))]);
    // The user's message is not repeated; the assistant's delta is.
    assert_eq!(progress(&events), vec!["Hi there friend!"]);
    // stats has only total_tokens 11638: no breakdown, all counted as input.
    assert_eq!(totals.tokens, t(11638, 0, 0, 0));
    assert_eq!(totals.cost_usd, None);
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: true,
            reason: None,
            text: Some("Hi there friend!".into()),
            session_id: Some("sess-1".into())
        }]
    );
}

#[test]
fn gemini_2_results_with_breakdown() {
    let (events, totals) = run("gemini", "gemini-stream-json-2-result.jsonl");
    // Line 1: input 4453 (non-cached), cached 8148, output 1
    //   + unlisted 12898 - 12601 - 1 = 296 → output 297.
    // Line 2 (another run: cached 0 < 8148, so its figures count in full):
    //   input 17031, cached 0, output 34 + (17158 - 17031 - 34 = 93) = 127.
    // Totals: input 4453 + 17031 = 21484, output 297 + 127 = 424,
    // cache read 8148 + 0 = 8148.
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(4453, 297, 8148, 0),
        total: t(4453, 297, 8148, 0),
        cost_usd: None,
        settled: true
    }));
    assert_eq!(totals.tokens, t(21484, 424, 8148, 0));
    assert_eq!(totals.cost_usd, None);
    let results = results(&events);
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| matches!(r, HarnessEvent::Result { success: true, reason: None, .. })));
}

#[test]
fn opencode_1_steps() {
    let (events, totals) = run("opencode", "opencode-run-json-1.jsonl");
    assert_eq!(sessions(&events), vec![(Some("ses_fe64248c1ffeT4xyThvSemc697"), None)]);
    // step_finish 1: input 237, output 39, reasoning 67, read 7936, write 0, cost 0.
    // step_finish 2: input 609, output 1, reasoning 9, read 7936, write 0, cost 0.
    // input 237 + 609 = 846; output (39 + 67) + (1 + 9) = 116;
    // cache read 7936 + 7936 = 15872; cache write 0; cost 0 on steps that
    // used tokens is no cost reported (a model opencode does not price).
    assert_eq!(totals.tokens, t(846, 116, 15872, 0));
    assert_eq!(totals.cost_usd, None);
    assert!(events.contains(&HarnessEvent::Usage {
        delta: t(237, 106, 7936, 0),
        total: t(237, 106, 7936, 0),
        cost_usd: None,
        settled: true
    }));
    assert_eq!(tool_names(&events), vec!["read", "bash"]);
    assert!(events.contains(&HarnessEvent::ToolUse {
        id: Some("tool-4da53b977dc849039bc44eef92eed4a1".into()),
        name: "read".into(),
        summary: r"D:\Development\saga-mcp-es1\.tmp-es1-capture\alpha.txt".into()
    }));
    assert!(events.contains(&HarnessEvent::ToolUse {
        id: Some("tool-a04824fda33d4b7ab56e97577915fcdc".into()),
        name: "bash".into(),
        summary: "ls -la".into()
    }));
    assert_eq!(
        tool_results(&events),
        vec![
            (Some("tool-4da53b977dc849039bc44eef92eed4a1"), false),
            (Some("tool-a04824fda33d4b7ab56e97577915fcdc"), false)
        ]
    );
    // The second step finished with reason "stop": the run succeeded (no
    // text part in this capture).
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: true,
            reason: None,
            text: None,
            session_id: Some("ses_fe64248c1ffeT4xyThvSemc697".into())
        }]
    );
}

#[test]
fn aider_1_stdout() {
    let (events, totals) = run("aider", "aider-stdout-1.txt");
    // "Tokens: 2.3k sent, 440 received. Cost: $0.00061 message, $0.00061 session."
    // input 2.3k, at most 2350 (counted high: never less than was used),
    // output 440, no cache parts; cost: the session figure 0.00061.
    assert_eq!(totals.tokens, t(2350, 440, 0, 0));
    assert_eq!(totals.cost_usd, Some(0.00061));
    assert_eq!(
        events[0],
        HarnessEvent::Usage {
            delta: t(2350, 440, 0, 0),
            total: t(2350, 440, 0, 0),
            cost_usd: Some(0.00061),
            settled: true
        }
    );
    // The other non-empty lines, in order; the three empty lines are skipped.
    assert_eq!(
        progress(&events),
        vec![
            "src/modules/leave/leave.routes.ts",
            "src/modules/leave/leave.middleware.ts",
            "Applied edit to src/modules/leave/leave.middleware.ts",
            "Applied edit to src/modules/leave/leave.routes.ts"
        ]
    );
    // The report ends an answered call: a result, right after the usage.
    assert_eq!(results(&events).len(), 1);
    assert!(matches!(events[1], HarnessEvent::Result { success: true, .. }), "{:?}", events[1]);
    assert_eq!(events.len(), 6);
}

// ---------------------------------------------------------------------------
// Real runs under corral against `corral mock-llm` (issue 14): the agent's
// output.log as the monitor kept it. The script's figures are in
// SOURCES.md; the totals must come out as `corral ps` showed them.

#[test]
fn gemini_0_61_under_corral_writes_a_file() {
    let (events, totals) = run("gemini", "gemini-0.61.0-corral-write-file.jsonl");
    // Stderr noise in the PTY before the JSON ("Warning: 256-color ...",
    // "Ripgrep is not available ...") is text, not an event of its own kind.
    assert_eq!(sessions(&events), vec![(Some("fef8fd57-134c-4ad2-9839-957acc5d71e9"), Some("gemini-2.5-flash"))]);
    assert_eq!(tool_names(&events), vec!["write_file"]);
    assert_eq!(tool_results(&events), vec![(Some("write_file__write_file_1796124524194_0"), false)]);
    // The script: calls of (2000 in, 20 out) and (2100 in incl. 1500 cached,
    // 5 out, 3 thinking). stats: input_tokens 4100, cached 1500, input
    // 2600, output_tokens 25, total_tokens 4128 (= 4100 + 25 + 3): corral's
    // output is 25 + the 3 unlisted.
    assert_eq!(totals.tokens, t(2600, 28, 1500, 0));
    assert_eq!(totals.cost_usd, None);
    let result = results(&events);
    assert_eq!(
        result,
        vec![&HarnessEvent::Result {
            success: true,
            reason: None,
            text: Some("I'll create the file.Wrote hello-from-gemini.txt.".into()),
            session_id: Some("fef8fd57-134c-4ad2-9839-957acc5d71e9".into())
        }]
    );
}

#[test]
fn gemini_0_61_error_400_is_a_failed_result_with_no_tokens() {
    let (events, totals) = run("gemini", "gemini-0.61.0-error-400.jsonl");
    let result = results(&events);
    assert_eq!(result.len(), 1);
    let HarnessEvent::Result { success, reason, text, .. } = result[0] else { unreachable!() };
    assert!(!success);
    assert_eq!(reason.as_deref(), Some("unknown"));
    assert!(text.as_deref().is_some_and(|t| t.contains("INVALID_ARGUMENT")), "{text:?}");
    assert_eq!(totals.tokens, t(0, 0, 0, 0));
}

#[test]
fn gemini_0_61_killed_mid_stream_reports_no_result() {
    // A group SIGTERM: exit 0 with no result line, so no Result event (the
    // supervisor then says it exited without reporting one).
    let (events, totals) = run("gemini", "gemini-0.61.0-sigterm-midstream.jsonl");
    assert!(results(&events).is_empty(), "{events:?}");
    assert_eq!(progress(&events), vec!["slow..."]);
    assert_eq!(totals.tokens, t(0, 0, 0, 0));
}

#[test]
fn opencode_1_18_under_corral_writes_a_file() {
    let (events, totals) = run("opencode", "opencode-1.18.33-corral-write.jsonl");
    assert_eq!(sessions(&events).len(), 1);
    assert_eq!(tool_names(&events), vec!["write"]);
    assert_eq!(tool_results(&events), vec![(Some("call_mock_0002_0"), false)]);
    // Steps: tokens {input 3000, output 40} and {input 200 (3100 - 2900
    // cached), output 6, cache.read 2900}; cost 0 (no price configured),
    // so no cost is known.
    assert_eq!(totals.tokens, t(3200, 46, 2900, 0));
    assert_eq!(totals.cost_usd, None);
    let result = results(&events);
    assert_eq!(result.len(), 1);
    assert!(
        matches!(result[0], HarnessEvent::Result { success: true, text: Some(text), .. } if text == "Created hello-from-opencode.txt.")
    );
}

#[test]
fn opencode_1_18_error_400_is_a_failed_result() {
    let (events, _) = run("opencode", "opencode-1.18.33-run-error-400.jsonl");
    assert_eq!(
        results(&events),
        vec![&HarnessEvent::Result {
            success: false,
            reason: Some("APIError".into()),
            text: Some("Invalid request (mock)".into()),
            session_id: Some("ses_dcf780622ffebemrMNL2eSXNdD".into())
        }]
    );
}

#[test]
fn aider_0_86_under_corral_edits_then_answers_two_messages() {
    let (events, totals) = run("aider", "aider-0.86.2-corral-edit-and-two-messages.txt");
    // Three answered calls, three results, all successful.
    let result = results(&events);
    assert_eq!(result.len(), 3, "{result:?}");
    assert!(result.iter().all(|r| matches!(r, HarnessEvent::Result { success: true, .. })));
    assert!(progress(&events).contains(&"Applied edit to hello-from-aider.txt"));
    // Reports: "600 sent, 40 received" (exact), "2.4k sent, 7 received"
    // (at most 2450), "12k sent, 1.5k received" (at most 12 500 and 1550):
    // never less than the script's 600 + 2400 + 12500 = 15 500 in and
    // 40 + 7 + 1500 = 1547 out.
    assert_eq!(totals.tokens, t(600 + 2450 + 12_500, 40 + 7 + 1550, 0, 0));
    // The session cost: $0.05 after the third call.
    assert_eq!(totals.cost_usd, Some(0.05));
}

#[test]
fn every_fixture_through_every_parser_never_panics() {
    for (name, _) in TESTED {
        for harness in ["claude", "codex", "gemini", "opencode", "aider", "generic"] {
            let mut parser = parser_for(harness).unwrap();
            for line in lines(name) {
                let _ = parser.feed_line(&line);
            }
            let totals = parser.totals();
            assert!(totals.tokens.total() < 10_000_000, "{harness} on {name}");
        }
    }
}
