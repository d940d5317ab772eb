//! The lifecycle fold, event by event, and every wait code.

use std::collections::BTreeSet;

use corral_probes::{ProbeKind, ProbeSet, ProbeSpec};

use super::*;

/// The names of the tests covering an event type. Naming a test that
/// does not exist fails to compile.
macro_rules! tests {
    ($($name:ident),+ $(,)?) => {{
        $(let _: fn() = $name;)+
        &[$(stringify!($name)),+]
    }};
}

const A: &str = "/root/a";

fn addr(text: &str) -> Address {
    Address::parse(text).unwrap()
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

fn event(seq: u64, agent: &str, body: EventBody) -> Event {
    Event {
        v: 1,
        seq,
        ts: Utc::now(),
        agent: Some(Address::parse(agent).unwrap()),
        parent: None,
        task: Some("t-1".into()),
        body,
    }
}

/// An event of the repository, not of an agent (the daily budget's).
fn repo_event(ts: DateTime<Utc>, body: EventBody) -> Event {
    Event { v: 1, seq: 0, ts, agent: None, parent: None, task: None, body }
}

fn spawned(seq: u64, agent: &str, id: u64) -> Event {
    event(
        seq,
        agent,
        EventBody::Spawned {
            id,
            harness: Harness::Generic,
            budget: Budget::default(),
            grace_secs: None,
            probes: Default::default(),
            restart: Default::default(),
            model: None,
            merge: Default::default(),
            // Flattened into the event: "no sandbox" reads back as an empty spec.
            sandbox: Some(Default::default()),
            notify: None,
            meter: Default::default(),
            task_text: "do it".into(),
            command: vec!["true".into()],
            branch: "corral/root/a".into(),
            worktree: "/tmp/wt".into(),
            base: "abc".into(),
        },
    )
}

/// Applies `body` as an event of agent A.
fn apply(record: &mut AgentRecord, body: EventBody) {
    record.apply(&event(0, A, body));
}

/// Agent A, just spawned.
fn starting() -> AgentRecord {
    AgentRecord::from_spawned(&spawned(1, A, 1)).unwrap()
}

fn running() -> AgentRecord {
    let mut record = starting();
    apply(&mut record, started(10));
    record
}

fn ended(state: AgentState) -> AgentRecord {
    let mut record = running();
    apply(&mut record, exited(state));
    record
}

fn readiness_probe() -> ProbeSet {
    ProbeSet { readiness: Some(ProbeSpec::new(ProbeKind::Event("init".into()))), ..Default::default() }
}

fn startup_probe() -> ProbeSet {
    ProbeSet { startup: Some(ProbeSpec::new(ProbeKind::Event("init".into()))), ..Default::default() }
}

fn tokens(input: u64) -> TokenUsage {
    TokenUsage { input, ..Default::default() }
}

fn started(pid: u32) -> EventBody {
    EventBody::Started { pid, monitor_pid: 9 }
}

fn exited(state: AgentState) -> EventBody {
    let code = if state == AgentState::Succeeded { 0 } else { 1 };
    EventBody::Exited { state, code: Some(code), signal: None, reason: None }
}

fn probe(change: &str) -> EventBody {
    EventBody::Probe {
        probe: "liveness".into(),
        kind: "exec".into(),
        change: change.into(),
        verdict: (change == "kill").then(|| "liveness_failed".into()),
        timed_out: false,
        message: "exit status 1".into(),
        consecutive_successes: 0,
        consecutive_failures: 3,
    }
}

fn usage(delta: u64, total: u64, cost_usd: Option<f64>) -> EventBody {
    EventBody::Usage {
        delta: tokens(delta),
        total: tokens(total),
        cost_usd,
        settled: false,
        offset: 150,
        usage_log_offset: None,
    }
}

fn result(success: bool) -> EventBody {
    EventBody::Result {
        success,
        reason: (!success).then(|| "error_max_turns".into()),
        text: Some("done".into()),
        session_id: None,
        offset: 160,
    }
}

fn sent(message_id: &str) -> EventBody {
    EventBody::MessageSent {
        message_id: message_id.into(),
        from: "/root".into(),
        to: A.into(),
        text: format!("text of {message_id}"),
        key: None,
    }
}

fn delivered(message_id: &str) -> EventBody {
    EventBody::MessageDelivered { message_id: message_id.into() }
}

fn stop(budget: Option<BudgetKind>) -> EventBody {
    EventBody::StopRequested { grace_secs: 5.0, budget }
}

fn restarted(count: u32) -> EventBody {
    EventBody::Restarted { count, reason: "exited with code 1".into(), backoff_secs: 1.0, code: Some(1), signal: None }
}

fn merge_started() -> EventBody {
    EventBody::MergeStarted {
        target: "main".into(),
        old: "abc".into(),
        new: "def".into(),
        strategy: Default::default(),
    }
}

/// One event of every type, as the tests below use them.
fn samples() -> Vec<EventBody> {
    vec![
        model_call(1, 100, Some(0.5)),
        EventBody::DaemonStarted { pid: 1 },
        EventBody::NoticeSent {
            message_id: "t-9-done".into(),
            to: "/root/lead".into(),
            kind: crate::model::notify::NoticeKind::Completion,
            text: "[corral] /root/lead/a ended: succeeded (exit 0).".into(),
        },
        EventBody::NoticeDelivered { message_id: "t-9-done".into(), from: "/root/lead/a".into() },
        EventBody::JournalRepaired {
            line: 7,
            reason: "not a whole event".into(),
            moved_to: "/s/events.jsonl.damaged".into(),
            bytes: 10,
        },
        EventBody::JournalResumed {
            since: chrono::Utc::now(),
            error: "No space left on device".into(),
            failed: 3,
            dropped_output: 2,
        },
        spawned(1, A, 1).body,
        EventBody::Queued {},
        EventBody::SpawnFailed { reason: "disk full".into() },
        started(10),
        EventBody::Adopted { pid: 11, monitor_pid: 12 },
        EventBody::Output { text: "hello".into(), offset: 100, skipped: 2 },
        EventBody::SessionStarted { session_id: Some("s-1".into()), model: Some("opus".into()), offset: 110 },
        EventBody::Progress { text: "thinking".into(), offset: 120, skipped: 0 },
        EventBody::ToolUse { id: Some("u-1".into()), name: "Bash".into(), summary: "ls".into(), offset: 130 },
        EventBody::ToolResult { id: Some("u-1".into()), is_error: false, summary: "a b".into(), offset: 140 },
        usage(100, 100, Some(0.25)),
        result(true),
        sent("m-1"),
        delivered("m-1"),
        EventBody::InputClosed {},
        EventBody::BudgetWarning { kind: BudgetKind::Tokens, used: 80.0, limit: 100.0 },
        EventBody::BudgetExceeded { kind: BudgetKind::Tokens, used: 100.0, limit: 100.0 },
        EventBody::Paused { kind: BudgetKind::Tokens, used: 90.0, limit: 100.0, owner: addr(A) },
        EventBody::Resumed { kind: BudgetKind::Tokens, limit: 300.0 },
        EventBody::BudgetRaised { kind: BudgetKind::Tokens, added: 200.0, limit: 300.0, by: "/root".into() },
        probe("ready"),
        restarted(1),
        EventBody::Assigned { task_text: "next".into(), command: vec!["true".into(), "next".into()] },
        EventBody::TaskQueued { task_id: "t-2".into(), task_text: "later".into() },
        EventBody::MergeQueued { strategy: Some(crate::git::merge::Strategy::Squash) },
        merge_started(),
        EventBody::Merged { target: "main".into(), commit: "def".into(), commits: 2, rescued: vec![], kept: vec![] },
        EventBody::Conflict { files: vec!["src/lib.rs".into()] },
        EventBody::GateFailed { code: Some(1), output: "1 test failed".into() },
        EventBody::MergeWaiting { why: "main has uncommitted changes".into(), files: vec!["README.md".into()] },
        EventBody::MergeRefused { why: "not a fast-forward".into() },
        stop(None),
        exited(AgentState::Succeeded),
        EventBody::Removed { worktree: "/tmp/wt".into(), deleted_branch: Some("corral/root/a".into()) },
    ]
}

/// The sample of one event type.
fn sample(type_name: &str) -> EventBody {
    samples().into_iter().find(|b| b.type_name() == type_name).unwrap_or_else(|| panic!("no {type_name} sample"))
}

/// The tests that say what each event type does to a record. No `_`
/// arm: a new event type does not compile until a test covers it.
fn covered_by(body: &EventBody) -> &'static [&'static str] {
    match body {
        EventBody::DaemonStarted { .. } => tests!(events_of_other_parts_leave_a_record_alone),
        EventBody::JournalRepaired { .. } => tests!(events_of_other_parts_leave_a_record_alone),
        EventBody::JournalResumed { .. } => tests!(events_of_other_parts_leave_a_record_alone),
        EventBody::Spawned { .. } => tests!(spawned_creates_a_starting_record_from_its_spec),
        EventBody::Queued {} => tests!(queued_moves_starting_to_pending_only),
        EventBody::SpawnFailed { .. } => {
            tests!(failed_spawn_frees_the_address, spawn_failed_removes_only_an_agent_still_starting)
        }
        EventBody::Started { .. } => {
            tests!(started_runs_the_agent_ready_without_probes, started_with_a_startup_or_readiness_probe_is_not_ready)
        }
        EventBody::Adopted { .. } => tests!(adopted_keeps_a_running_agents_readiness_and_start_time),
        EventBody::Output { .. }
        | EventBody::Progress { .. }
        | EventBody::ToolUse { .. }
        | EventBody::ToolResult { .. } => tests!(transcript_events_only_advance_the_log_offset),
        EventBody::SessionStarted { .. } => tests!(session_started_sets_session_and_model_when_given),
        EventBody::Usage { .. } => {
            tests!(usage_sets_the_total_and_keeps_the_last_known_cost, daily_spend_adds_token_deltas_and_cost_growth)
        }
        EventBody::ModelCall { .. } => tests!(model_calls_are_a_proxy_metered_agents_usage_counted_once),
        EventBody::Result { .. } => tests!(result_counts_the_turn_and_keeps_the_session),
        EventBody::NoticeSent { .. } | EventBody::NoticeDelivered { .. } => {
            tests!(a_notice_waits_in_the_parents_messages_once_and_is_delivered)
        }
        EventBody::MessageSent { .. } | EventBody::MessageDelivered { .. } => {
            tests!(a_message_waits_until_delivered, input_closes_only_when_every_message_is_answered)
        }
        EventBody::InputClosed {} => tests!(input_closed_marks_the_input_closed),
        EventBody::BudgetWarning { .. } => {
            tests!(budget_warning_is_remembered_once_per_kind, daily_budget_events_without_an_agent_mark_the_day)
        }
        EventBody::BudgetExceeded { .. } => {
            tests!(budget_exceeded_keeps_the_first_spent_budget, daily_budget_events_without_an_agent_mark_the_day)
        }
        EventBody::Paused { .. } | EventBody::Resumed { .. } | EventBody::BudgetRaised { .. } => {
            tests!(paused_until_resumed_and_a_raise_sets_the_limit)
        }
        EventBody::Probe { .. } => tests!(
            probe_ready_and_not_ready_set_readiness,
            probe_kill_unreadies_the_agent_and_says_why,
            probe_passed_and_failed_change_nothing
        ),
        EventBody::Restarted { .. } => tests!(restarted_starts_a_new_process_and_counts_restarts),
        EventBody::Assigned { .. } => {
            tests!(assigned_starts_a_new_run_and_keeps_usage, assigned_clears_the_previous_stop)
        }
        EventBody::TaskQueued { .. } => tests!(task_queued_waits_in_order_until_assigned),
        EventBody::MergeQueued { .. } | EventBody::MergeStarted { .. } => {
            tests!(
                merge_queued_and_started_leave_the_merge_unsettled,
                is_done_waits_for_an_auto_merge_to_settle,
                merge_queued_keeps_the_strategy_asked_for_and_old_journals_ask_none
            )
        }
        EventBody::Merged { .. }
        | EventBody::Conflict { .. }
        | EventBody::GateFailed { .. }
        | EventBody::MergeWaiting { .. }
        | EventBody::MergeRefused { .. } => {
            tests!(each_merge_outcome_sets_a_settled_merge_state, succeeded_wait_code_follows_the_merge)
        }
        EventBody::StopRequested { .. } => tests!(
            stop_requested_marks_the_stop_and_keeps_the_first_budget,
            budget_exceeded_wait_code_tells_budgets_apart
        ),
        EventBody::Exited { .. } => tests!(
            exited_ends_the_run_with_its_figures,
            exited_after_the_agent_already_ended_is_ignored,
            first_exit_stands
        ),
        EventBody::Removed { .. } => tests!(removed_marks_the_worktree_gone_and_keeps_the_state),
    }
}

/// Every `type` the event schema declares, as serde reads them (its
/// error for an unknown type lists them all).
fn declared_event_types() -> BTreeSet<String> {
    let err = serde_json::from_str::<EventBody>(r#"{"type":"no_such_type"}"#).unwrap_err().to_string();
    let (_, list) = err.split_once("expected one of ").unwrap_or_else(|| panic!("unexpected error: {err}"));
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn every_event_type_has_a_sample_and_a_covering_test() {
    let declared = declared_event_types();
    assert!(declared.contains("spawned") && declared.contains("removed"), "{declared:?}");
    let samples = samples();
    let sampled: BTreeSet<String> = samples.iter().map(|b| b.type_name().to_string()).collect();
    assert_eq!(sampled.len(), samples.len(), "one sample per event type");
    assert_eq!(sampled, declared, "the samples and the schema's event types differ");
    for body in &samples {
        assert!(!covered_by(body).is_empty(), "{} is covered by no test", body.type_name());
    }
}

#[test]
fn type_name_is_the_json_type_of_every_sample() {
    for body in samples() {
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["type"], body.type_name(), "{json}");
        let back: EventBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body);
    }
}

#[test]
fn an_ended_agent_stays_ended_until_assigned() {
    let terminal = [
        AgentState::Succeeded,
        AgentState::Failed,
        AgentState::Stopped,
        AgentState::BudgetExceeded,
        AgentState::TimedOut,
        AgentState::Lost,
    ];
    for state in terminal {
        for body in samples().into_iter().filter(|b| b.type_name() != "assigned") {
            let mut record = ended(state);
            let name = body.type_name();
            apply(&mut record, body);
            assert_eq!(record.state, state, "{name} changed an agent that ended {state:?}");
        }
    }
}

// What each event does.

#[test]
fn events_of_other_parts_leave_a_record_alone() {
    for name in ["daemon_started", "journal_repaired", "journal_resumed", "spawned", "spawn_failed"] {
        let mut record = running();
        let before = record.clone();
        apply(&mut record, sample(name));
        assert_eq!(record, before, "{name}");
    }
    // The daemon's own start touches no agent and no day.
    let mut table = AgentTable::default();
    table.apply(&spawned(1, A, 1));
    let agents = table.agents.clone();
    for name in ["daemon_started", "journal_repaired", "journal_resumed"] {
        table.apply(&repo_event(Utc::now(), sample(name)));
    }
    assert_eq!(table.agents, agents);
    assert!(table.daily.is_empty());
}

#[test]
fn spawned_creates_a_starting_record_from_its_spec() {
    let mut spawn = spawned(1, "/root/lead/a", 7);
    spawn.task = Some("t-3".into());
    if let EventBody::Spawned { budget, grace_secs, model, probes, .. } = &mut spawn.body {
        budget.tokens = Some(1000);
        *grace_secs = Some(2.5);
        *model = Some("opus".into());
        *probes = readiness_probe();
    }
    let mut table = AgentTable::default();
    table.apply(&spawn);
    let a = &table.agents[&addr("/root/lead/a")];
    assert_eq!(a.state, AgentState::Starting);
    assert_eq!((a.id, a.task_id.as_str(), a.task.as_str()), (7, "t-3", "do it"));
    assert_eq!(a.command, vec!["true".to_string()]);
    assert_eq!((a.branch.as_str(), a.base.as_str()), ("corral/root/a", "abc"));
    assert_eq!(a.worktree, PathBuf::from("/tmp/wt"));
    assert_eq!(a.parent, addr("/root/lead"), "the parent follows from the address");
    assert_eq!(a.budget.tokens, Some(1000));
    assert_eq!(a.grace_secs, Some(2.5));
    assert_eq!(a.model.as_deref(), Some("opus"));
    assert_eq!(a.probes, readiness_probe());
    assert_eq!(a.spawned_at, spawn.ts);
    assert_eq!((a.pid, a.started_at, a.ended_at), (None, None, None));
    assert!(!a.ready && !a.stop_requested && !a.removed);
    assert_eq!((a.restarts, a.results, a.log_offset), (0, 0, 0));
    assert_eq!(a.usage, TokenUsage::default());
    assert_eq!((a.merge_state.clone(), a.exceeded, a.stopped_for), (None, None, None));
    assert!(a.queued_tasks.is_empty() && a.pending_messages.is_empty() && a.warned.is_empty());
    assert_eq!(table.last_id, 7);

    // A parent named by the event wins; a lower id never lowers last_id.
    let mut other = spawned(2, "/root/b", 3);
    other.parent = Some(addr("/root/lead"));
    table.apply(&other);
    assert_eq!(table.agents[&addr("/root/b")].parent, addr("/root/lead"));
    assert_eq!(table.last_id, 7);

    // Only a spawned event with an agent makes a record; its id still counts.
    assert!(AgentRecord::from_spawned(&event(3, A, started(1))).is_none());
    let mut nobody = spawned(4, A, 9);
    nobody.agent = None;
    assert!(AgentRecord::from_spawned(&nobody).is_none());
    table.apply(&nobody);
    assert_eq!(table.last_id, 9);
    assert_eq!(table.agents.len(), 2);
}

#[test]
fn queued_moves_starting_to_pending_only() {
    let mut record = starting();
    apply(&mut record, sample("queued"));
    assert_eq!(record.state, AgentState::Pending);
    assert!(!record.state.is_terminal() && !record.is_done());
    // A slot frees: it starts.
    apply(&mut record, started(10));
    assert_eq!(record.state, AgentState::Running);
    apply(&mut record, sample("queued"));
    assert_eq!(record.state, AgentState::Running);
    // Stopped before it started.
    let mut record = starting();
    apply(&mut record, sample("queued"));
    apply(&mut record, exited(AgentState::Stopped));
    assert_eq!(record.state, AgentState::Stopped);
    assert_eq!(record.started_at, None);
}

#[test]
fn spawn_failed_removes_only_an_agent_still_starting() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, A, 1));
    table.apply(&event(2, A, started(10)));
    table.apply(&event(3, A, sample("spawn_failed")));
    assert_eq!(table.agents[&addr(A)].state, AgentState::Running);
    // Nor a spawn failure of an address nobody has.
    table.apply(&event(4, "/root/b", sample("spawn_failed")));
    assert_eq!(table.agents.len(), 1);
}

#[test]
fn started_runs_the_agent_ready_without_probes() {
    let mut record = starting();
    let start = event(2, A, sample("started"));
    record.apply(&start);
    assert_eq!(record.state, AgentState::Running);
    assert_eq!((record.pid, record.monitor_pid), (Some(10), Some(9)));
    assert_eq!(record.started_at, Some(start.ts));
    assert!(record.ready);
    assert_eq!(record.wait_code(), WAIT_TIMED_OUT);
}

#[test]
fn started_with_a_startup_or_readiness_probe_is_not_ready() {
    for probes in [readiness_probe(), startup_probe()] {
        let mut record = starting();
        record.probes = probes;
        apply(&mut record, started(10));
        assert_eq!(record.state, AgentState::Running);
        assert!(!record.ready);
    }
}

#[test]
fn adopted_keeps_a_running_agents_readiness_and_start_time() {
    let mut record = starting();
    record.probes = readiness_probe();
    let start = event(2, A, started(10));
    record.apply(&start);
    apply(&mut record, probe("ready"));
    let mut adopted = event(3, A, sample("adopted"));
    adopted.ts = start.ts + chrono::Duration::seconds(60);
    record.apply(&adopted);
    assert_eq!(record.state, AgentState::Running);
    assert_eq!((record.pid, record.monitor_pid), (Some(11), Some(12)));
    assert_eq!(record.started_at, Some(start.ts));
    assert!(record.ready, "adoption keeps what the probes said");
    // A restarted daemon adopts an agent it saw only starting.
    let mut record = starting();
    apply(&mut record, sample("adopted"));
    assert_eq!((record.state, record.pid, record.ready), (AgentState::Running, Some(11), true));
}

#[test]
fn transcript_events_only_advance_the_log_offset() {
    for name in ["output", "progress", "tool_use", "tool_result"] {
        let body = sample(name);
        let offset = body.log_offset().unwrap();
        let mut record = running();
        let mut expected = record.clone();
        apply(&mut record, body.clone());
        expected.log_offset = offset;
        assert_eq!(record, expected, "{name}");
        // An older line never moves it back.
        record.log_offset = offset + 50;
        apply(&mut record, body);
        assert_eq!(record.log_offset, offset + 50, "{name}");
    }
}

#[test]
fn session_started_sets_session_and_model_when_given() {
    let mut record = running();
    apply(&mut record, sample("session_started"));
    assert_eq!(record.session_id.as_deref(), Some("s-1"));
    assert_eq!(record.model.as_deref(), Some("opus"));
    assert_eq!(record.log_offset, 110);
    apply(&mut record, EventBody::SessionStarted { session_id: None, model: None, offset: 5 });
    assert_eq!(record.session_id.as_deref(), Some("s-1"));
    assert_eq!(record.model.as_deref(), Some("opus"));
    assert_eq!(record.log_offset, 110);
}

#[test]
fn usage_sets_the_total_and_keeps_the_last_known_cost() {
    let mut record = running();
    apply(&mut record, sample("usage"));
    assert_eq!(record.usage, tokens(100));
    assert_eq!(record.cost_usd, Some(0.25));
    assert_eq!(record.log_offset, 150);
    apply(&mut record, usage(200, 300, None));
    assert_eq!(record.usage, tokens(300));
    assert_eq!(record.cost_usd, Some(0.25));
    assert_eq!(record.state, AgentState::Running);
}

fn model_call(call: u64, input: u64, cost_usd: Option<f64>) -> EventBody {
    EventBody::ModelCall {
        call,
        provider: crate::proxy::Provider::Anthropic,
        model: Some("m".into()),
        status: 200,
        usage: tokens(input),
        cost_usd,
        flag: None,
        refused: None,
        estimate_input: 0,
        output_cap: None,
        ttfb_ms: 1.0,
        duration_ms: 2.0,
    }
}

/// A table with agent A spawned, metered by its proxy.
fn proxy_metered() -> AgentTable {
    let mut table = AgentTable::default();
    let mut spawn = spawned(1, A, 1);
    if let EventBody::Spawned { meter, .. } = &mut spawn.body {
        *meter = crate::model::budget::Meter::Proxy;
    }
    table.apply(&spawn);
    table
}

#[test]
fn model_calls_are_a_proxy_metered_agents_usage_counted_once() {
    let mut table = proxy_metered();
    let ts = at("2026-03-10T12:00:00Z");
    let mut on = |body| {
        let mut e = event(0, A, body);
        e.ts = ts;
        table.apply(&e);
        (table.agents[&Address::parse(A).unwrap()].clone(), table.daily.get(&day_of(ts)).cloned().unwrap_or_default())
    };
    // The CLI's own usage lines count nothing: the calls are the meter.
    let (record, day) = on(usage(500, 500, Some(0.25)));
    assert_eq!((record.usage, record.cost_usd, day.tokens), (TokenUsage::default(), Some(0.25), 0));
    let (record, day) = on(model_call(1, 100, None));
    assert_eq!((record.usage, record.calls, day.tokens), (tokens(100), 1, 100));
    // A priced call replaces the CLI's cost; later calls add to it.
    let (record, day) = on(model_call(2, 50, Some(0.5)));
    assert_eq!((record.usage, record.cost_usd, day.tokens, day.cost), (tokens(150), Some(0.5), 150, 0.5));
    let (record, _) = on(usage(900, 1400, Some(9.0)));
    assert_eq!((record.usage, record.cost_usd), (tokens(150), Some(0.5)));
    let (record, day) = on(model_call(3, 10, Some(0.125)));
    assert_eq!((record.usage, record.cost_usd, record.calls, day.cost), (tokens(160), Some(0.625), 3, 0.625));
}

#[test]
fn counts_a_server_reports_at_their_largest_saturate_and_never_wrap() {
    // A hostile upstream's figures: were the sums to wrap, a budget would
    // see almost nothing spent.
    let mut table = proxy_metered();
    let ts = at("2026-03-10T12:00:00Z");
    for (call, input) in [(1, u64::MAX), (2, 5)] {
        let mut e = event(0, A, model_call(call, input, None));
        e.ts = ts;
        table.apply(&e);
    }
    assert_eq!(table.agents[&Address::parse(A).unwrap()].usage.total(), u64::MAX);
    assert_eq!(table.daily[&day_of(ts)].tokens, u64::MAX);
}

#[test]
fn daily_spend_adds_token_deltas_and_cost_growth() {
    let day1 = at("2026-03-10T12:00:00Z");
    let day3 = at("2026-03-12T12:00:00Z");
    let mut table = AgentTable::default();
    table.apply(&spawned(1, A, 1));
    table.apply(&spawned(2, "/root/b", 2));
    let mut on = |ts, agent: &str, body| {
        let mut e = event(0, agent, body);
        e.ts = ts;
        table.apply(&e);
        table.daily.get(&day_of(ts)).cloned().unwrap_or_default()
    };
    let day = on(day1, A, usage(100, 100, Some(0.25)));
    assert_eq!((day.tokens, day.cost), (100, 0.25));
    // No cost reported: nothing is added to the day's cost.
    let day = on(day1, A, usage(50, 150, None));
    assert_eq!((day.tokens, day.cost), (150, 0.25));
    // The cost is a running total: the day gets its growth.
    let day = on(day1, A, usage(0, 150, Some(0.75)));
    assert_eq!((day.tokens, day.cost), (150, 0.75));
    // A lower total (settled figures) takes nothing back.
    let day = on(day1, A, usage(0, 150, Some(0.5)));
    assert_eq!((day.tokens, day.cost), (150, 0.75));
    // Every agent counts toward the same day.
    let day = on(day1, "/root/b", usage(10, 10, Some(0.125)));
    assert_eq!((day.tokens, day.cost), (160, 0.875));
    // Another day starts from nothing; its cost is the growth over the
    // most the agent had shown (0.75: a lower figure takes nothing back,
    // from the agent either).
    let day = on(day3, A, usage(5, 155, Some(1.0)));
    assert_eq!((day.tokens, day.cost), (5, 0.25));
    assert_eq!(table.daily[&day_of(day1)].tokens, 160);
    assert_eq!(table.agents[&addr(A)].usage, tokens(155));
    assert!(table.daily.values().all(|d| d.warned.is_empty() && d.exceeded.is_empty()));
}

#[test]
fn an_agents_usage_never_drops_when_its_parser_starts_again_lower() {
    // Regression: after a daemon restart, a Gemini parser rebuilt from the
    // output log alone (a run without a result, whose figures only its
    // session log had) restarted its total lower, and the agent's usage
    // was replaced by it.
    let mut table = AgentTable::default();
    table.apply(&spawned(1, A, 1));
    table.apply(&event(0, A, usage(11_100, 11_100, Some(1.0))));
    table.apply(&event(0, A, usage(500, 600, Some(0.1))));
    assert_eq!(table.agents[&addr(A)].usage, tokens(11_600));
    assert_eq!(table.agents[&addr(A)].cost_usd, Some(1.0));
}

#[test]
fn daily_budget_events_without_an_agent_mark_the_day() {
    let ts = at("2026-03-10T12:00:00Z");
    let mut table = AgentTable::default();
    table.apply(&spawned(1, A, 1));
    table.apply(&repo_event(ts, EventBody::BudgetWarning { kind: BudgetKind::DailyTokens, used: 8.0, limit: 10.0 }));
    table.apply(&repo_event(ts, EventBody::BudgetExceeded { kind: BudgetKind::DailyCost, used: 5.0, limit: 5.0 }));
    let day = &table.daily[&day_of(ts)];
    assert_eq!(day.warned, vec![BudgetKind::DailyTokens]);
    assert_eq!(day.exceeded, vec![BudgetKind::DailyCost]);
    let a = &table.agents[&addr(A)];
    assert!(a.warned.is_empty() && a.exceeded.is_none(), "the day's budget is no agent's own");
    // An agent's own budget events are the agent's, not the day's.
    let mut own = event(2, A, sample("budget_warning"));
    own.ts = ts;
    table.apply(&own);
    let mut own = event(3, A, sample("budget_exceeded"));
    own.ts = ts;
    table.apply(&own);
    let day = &table.daily[&day_of(ts)];
    assert_eq!((day.warned.len(), day.exceeded.len()), (1, 1));
    let a = &table.agents[&addr(A)];
    assert_eq!(a.warned, vec![BudgetKind::Tokens]);
    assert_eq!(a.exceeded, Some((BudgetKind::Tokens, 100.0, 100.0)));
}

#[test]
fn result_counts_the_turn_and_keeps_the_session() {
    let mut record = running();
    apply(
        &mut record,
        EventBody::Result {
            success: false,
            reason: Some("error_max_turns".into()),
            text: None,
            session_id: Some("s-2".into()),
            offset: 160,
        },
    );
    assert_eq!(
        record.result,
        Some(ResultSummary { success: false, reason: Some("error_max_turns".into()), text: None })
    );
    assert_eq!((record.results, record.log_offset), (1, 160));
    assert_eq!(record.session_id.as_deref(), Some("s-2"));
    assert!(!record.turn_pending);
    assert!(record.idle, "its result answered everything it was given");
    // Between turns, a message (a child's notice, say) is a turn of its
    // own: the result that follows answers it, and nothing more is pending.
    apply(&mut record, sent("m-1"));
    apply(&mut record, delivered("m-1"));
    assert!(!record.idle && !record.delivered_since_result);
    apply(&mut record, sample("result"));
    assert_eq!(record.result, Some(ResultSummary { success: true, reason: None, text: Some("done".into()) }));
    assert_eq!(record.results, 2);
    assert_eq!(record.session_id.as_deref(), Some("s-2"), "a result without a session keeps it");
    assert!(!record.turn_pending && record.idle);
    // A message that reaches it during a turn: another turn follows.
    apply(&mut record, sent("m-2"));
    apply(&mut record, delivered("m-2"));
    apply(&mut record, sent("m-3"));
    apply(&mut record, delivered("m-3"));
    apply(&mut record, sample("result"));
    assert!(record.turn_pending && !record.delivered_since_result && !record.idle);
    apply(&mut record, sample("result"));
    assert!(!record.turn_pending && record.idle);
    assert_eq!(record.state, AgentState::Running, "a result ends no process");
}

#[test]
fn a_message_waits_until_delivered() {
    let mut record = running();
    apply(&mut record, sample("message_sent"));
    apply(&mut record, sent("m-2"));
    let ids: Vec<&str> = record.pending_messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m-1", "m-2"], "oldest first");
    assert_eq!(
        record.pending_messages[0],
        PendingMessage { message_id: "m-1".into(), from: "/root".into(), text: "text of m-1".into(), notice: false }
    );
    assert_eq!(record.messages_sent, 2);
    assert!(!record.delivered_since_result);
    apply(&mut record, sample("message_delivered"));
    let ids: Vec<&str> = record.pending_messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m-2"]);
    assert!(record.delivered_since_result);
    apply(&mut record, delivered("m-9"));
    assert_eq!(record.pending_messages.len(), 1, "an unknown id delivers nothing");
    assert_eq!(record.messages_sent, 2);
}

#[test]
fn input_closed_marks_the_input_closed() {
    let mut record = running();
    record.harness = Harness::Claude;
    apply(&mut record, result(true));
    assert!(record.input_done());
    apply(&mut record, sample("input_closed"));
    assert!(record.input_closed);
    assert!(!record.input_done(), "closed once");
    assert_eq!(record.state, AgentState::Running);
    // An ended agent has no input to close.
    let mut record = running();
    record.harness = Harness::Claude;
    apply(&mut record, result(true));
    apply(&mut record, exited(AgentState::Succeeded));
    assert!(!record.input_done());
}

#[test]
fn budget_warning_is_remembered_once_per_kind() {
    let mut record = running();
    apply(&mut record, sample("budget_warning"));
    apply(&mut record, sample("budget_warning"));
    apply(&mut record, EventBody::BudgetWarning { kind: BudgetKind::Cost, used: 0.8, limit: 1.0 });
    assert_eq!(record.warned, vec![BudgetKind::Tokens, BudgetKind::Cost]);
    assert_eq!((record.state, record.exceeded, record.stop_requested), (AgentState::Running, None, false));
}

#[test]
fn budget_exceeded_keeps_the_first_spent_budget() {
    let mut record = running();
    apply(&mut record, sample("budget_exceeded"));
    apply(&mut record, EventBody::BudgetExceeded { kind: BudgetKind::Cost, used: 2.0, limit: 1.0 });
    assert_eq!(record.exceeded, Some((BudgetKind::Tokens, 100.0, 100.0)));
    // The stop follows as its own events.
    assert_eq!((record.state, record.stop_requested, record.stopped_for), (AgentState::Running, false, None));
}

#[test]
fn paused_until_resumed_and_a_raise_sets_the_limit() {
    let mut record = running();
    record.budget.tokens = Some(100);
    apply(&mut record, sample("paused"));
    let paused = record.paused.clone().expect("paused");
    assert_eq!((paused.kind, paused.used, paused.limit, paused.owner), (BudgetKind::Tokens, 90.0, 100.0, addr(A)));
    // Paused is no stop: it still runs, and nothing else changed.
    assert_eq!((record.state, record.stop_requested, record.exceeded), (AgentState::Running, false, None));
    apply(&mut record, sample("budget_raised"));
    assert_eq!(record.budget.tokens, Some(300));
    assert!(record.paused.is_some(), "a raise alone does not resume");
    apply(&mut record, sample("resumed"));
    assert!(record.paused.is_none());
    apply(&mut record, sample("paused"));
    apply(&mut record, exited(AgentState::Stopped));
    assert!(record.paused.is_none(), "an agent that ended is not paused");
}

#[test]
fn probe_ready_and_not_ready_set_readiness() {
    let mut record = starting();
    record.probes = readiness_probe();
    apply(&mut record, started(10));
    assert!(!record.ready);
    let before = record.clone();
    apply(&mut record, sample("probe"));
    assert!(record.ready);
    apply(&mut record, probe("not_ready"));
    assert!(!record.ready);
    assert_eq!(record, before, "readiness is all they change");
}

#[test]
fn probe_kill_unreadies_the_agent_and_says_why() {
    let mut record = running();
    assert!(record.ready);
    apply(&mut record, probe("kill"));
    assert!(!record.ready);
    assert_eq!(record.probe_killed.as_deref(), Some("liveness probe failed: exit status 1"));
    assert_eq!(record.state, AgentState::Running, "the exit follows as its own event");
}

#[test]
fn probe_passed_and_failed_change_nothing() {
    for change in ["passed", "failed", "a_change_from_a_newer_corral"] {
        for ready in [true, false] {
            let mut record = running();
            record.ready = ready;
            let before = record.clone();
            apply(&mut record, probe(change));
            assert_eq!(record, before, "{change}");
        }
    }
}

#[test]
fn restarted_starts_a_new_process_and_counts_restarts() {
    let mut record = starting();
    record.probes = readiness_probe();
    record.harness = Harness::Claude;
    apply(&mut record, started(10));
    apply(&mut record, probe("ready"));
    apply(&mut record, sample("session_started"));
    apply(&mut record, sample("usage"));
    apply(&mut record, sent("m-1"));
    apply(&mut record, delivered("m-1"));
    apply(&mut record, result(false));
    apply(&mut record, sent("m-2"));
    apply(&mut record, EventBody::InputClosed {});
    apply(&mut record, probe("kill"));
    assert!(record.turn_pending && record.input_closed && record.probe_killed.is_some());
    let before = record.clone();

    apply(&mut record, sample("restarted"));
    assert_eq!(record.restarts, 1);
    assert_eq!(record.probe_killed, None);
    assert!(!record.ready, "readiness starts over: its readiness probe decides");
    assert!(!record.input_closed);
    assert_eq!((record.results, record.result.clone()), (0, None));
    assert!(!record.delivered_since_result && !record.turn_pending);
    // The agent goes on: same state, spend, session, log and messages.
    assert_eq!(record.state, AgentState::Running);
    assert_eq!((record.usage, record.cost_usd), (before.usage, before.cost_usd));
    assert_eq!(record.session_id, before.session_id);
    assert_eq!(record.log_offset, before.log_offset);
    assert_eq!(record.pending_messages, before.pending_messages);
    assert_eq!((record.pid, record.started_at), (before.pid, before.started_at));

    // The count only grows, even replayed out of order.
    apply(&mut record, restarted(3));
    apply(&mut record, restarted(2));
    assert_eq!(record.restarts, 3);
    // Without startup or readiness probes the new process is ready at once.
    let mut record = running();
    apply(&mut record, probe("kill"));
    apply(&mut record, restarted(1));
    assert!(record.ready);
    // Its new pid comes with `started`, which keeps its readiness.
    apply(&mut record, started(20));
    assert_eq!((record.pid, record.ready), (Some(20), true));
}

#[test]
fn assigned_starts_a_new_run_and_keeps_usage() {
    let mut record = starting();
    record.harness = Harness::Claude;
    let start = event(2, A, started(10));
    record.apply(&start);
    for body in [
        sample("session_started"),
        sample("output"),
        usage(100, 100, Some(0.25)),
        sample("budget_warning"),
        sent("m-1"),
        delivered("m-1"),
        result(true),
        sent("m-2"),
        EventBody::TaskQueued { task_id: "t-2".into(), task_text: "second".into() },
        EventBody::TaskQueued { task_id: "t-3".into(), task_text: "third".into() },
        EventBody::InputClosed {},
        restarted(2),
        probe("kill"),
        exited(AgentState::Succeeded),
        EventBody::MergeQueued { strategy: None },
        sample("merged"),
    ] {
        apply(&mut record, body);
    }
    let before = record.clone();
    assert!(before.is_done() && before.ended_at.is_some());

    let mut assign = event(5, A, sample("assigned"));
    assign.task = Some("t-2".into());
    assign.ts = start.ts + chrono::Duration::seconds(60);
    record.apply(&assign);
    // The new task.
    assert_eq!((record.task_id.as_str(), record.task.as_str()), ("t-2", "next"));
    assert_eq!(record.queued_tasks, vec![("t-3".to_string(), "third".to_string())]);
    // What ended is reset.
    assert_eq!(record.state, AgentState::Starting);
    assert_eq!((record.pid, record.started_at, record.ended_at), (None, None, None));
    assert_eq!((record.exit_code, record.signal, record.reason.clone()), (None, None, None));
    assert!(!record.stop_requested);
    assert_eq!((record.result.clone(), record.results), (None, 0));
    assert!(!record.delivered_since_result && !record.turn_pending && !record.input_closed);
    assert_eq!((record.merge_state.clone(), record.probe_killed.clone()), (None, None));
    assert!(!record.is_done());
    assert_eq!(record.wait_code(), WAIT_TIMED_OUT);
    // What carries over: spend, budgets, session, log, messages, restarts,
    // and the launch command (each run derives its own from it).
    assert_eq!((record.usage, record.cost_usd), (tokens(100), Some(0.25)));
    assert_eq!(record.warned, vec![BudgetKind::Tokens]);
    assert_eq!(record.session_id.as_deref(), Some("s-1"));
    assert_eq!(record.log_offset, before.log_offset);
    assert_eq!(record.pending_messages, before.pending_messages);
    assert_eq!(record.messages_sent, 2);
    assert_eq!(record.restarts, 2);
    assert_eq!(record.command, vec!["true".to_string()]);
    assert_eq!((record.id, record.spawned_at), (before.id, before.spawned_at));
    assert_eq!((&record.branch, &record.worktree, &record.base), (&before.branch, &before.worktree, &before.base));

    // The new run starts afresh.
    let mut start = event(6, A, started(20));
    start.ts = assign.ts;
    record.apply(&start);
    assert_eq!((record.state, record.pid, record.started_at), (AgentState::Running, Some(20), Some(start.ts)));
    assert!(record.ready);
    // An assigned event without a task id keeps the current one.
    let mut record = ended(AgentState::Succeeded);
    let mut assign = event(7, A, sample("assigned"));
    assign.task = None;
    record.apply(&assign);
    assert_eq!((record.task_id.as_str(), record.task.as_str()), ("t-1", "next"));

    // The next run's monitor and proxy are new: its calls count from 1
    // again, and what the last run's calls spent stays.
    let mut record = ended(AgentState::Succeeded);
    record.apply(&event(8, A, model_call(1, 100, None)));
    assert_eq!((record.calls, record.calls_journaled), (1, Some(1)));
    record.calls_journaled = None; // as folded by an earlier build
    record.apply(&event(9, A, sample("assigned")));
    assert_eq!((record.calls, record.calls_journaled, record.usage), (0, Some(0), tokens(100)));
}

#[test]
fn assigned_clears_the_previous_stop() {
    let mut record = running();
    apply(&mut record, stop(None));
    apply(&mut record, EventBody::Exited { state: AgentState::Stopped, code: None, signal: Some(15), reason: None });
    assert_eq!(record.wait_code(), 21);
    apply(&mut record, sample("assigned"));
    assert!(!record.stop_requested);
    apply(&mut record, started(20));
    apply(&mut record, exited(AgentState::Succeeded));
    assert_eq!((record.state, record.wait_code()), (AgentState::Succeeded, 0));
}

/// Reported, not fixed: `assigned` resets `stop_requested` but keeps
/// `stopped_for`, so a run after a budget stop by an ancestor (or the
/// daily budget), which `corral assign` allows, is classified as
/// budget-exceeded however it ends.
#[test]
fn assigned_forgets_the_budget_the_last_run_was_stopped_for() {
    let mut record = running();
    apply(&mut record, stop(Some(BudgetKind::DailyTokens)));
    apply(&mut record, exited(AgentState::BudgetExceeded));
    apply(&mut record, sample("assigned"));
    assert_eq!(record.stopped_for, None);
    let state = classify_exit(Some(0), None, record.stop_requested, None, false, record.stopped_for);
    assert_eq!(state, AgentState::Succeeded);
}

#[test]
fn task_queued_waits_in_order_until_assigned() {
    let mut record = running();
    apply(&mut record, sample("task_queued"));
    apply(&mut record, EventBody::TaskQueued { task_id: "t-3".into(), task_text: "third".into() });
    assert_eq!(
        record.queued_tasks,
        vec![("t-2".to_string(), "later".to_string()), ("t-3".to_string(), "third".to_string())]
    );
    assert_eq!((record.state, record.task_id.as_str()), (AgentState::Running, "t-1"));
    // Assigning one takes that one off the queue only.
    apply(&mut record, exited(AgentState::Succeeded));
    let mut assign = event(5, A, sample("assigned"));
    assign.task = Some("t-3".into());
    record.apply(&assign);
    assert_eq!(record.queued_tasks, vec![("t-2".to_string(), "later".to_string())]);
}

#[test]
fn merge_queued_and_started_leave_the_merge_unsettled() {
    let mut record = ended(AgentState::Succeeded);
    apply(&mut record, sample("merge_queued"));
    assert_eq!(record.merge_state, Some(MergeState::Queued));
    apply(&mut record, sample("merge_started"));
    assert_eq!(
        record.merge_state,
        Some(MergeState::Merging { target: "main".into(), old: "abc".into(), new: "def".into() })
    );
    let merge = record.merge_state.clone().unwrap();
    assert!(!merge.is_settled());
    assert_eq!(merge.as_str(), "merging");
    assert!(!MergeState::Queued.is_settled());
    assert_eq!(record.state, AgentState::Succeeded);
}

#[test]
fn merge_queued_keeps_the_strategy_asked_for_and_old_journals_ask_none() {
    use crate::git::merge::Strategy;
    // What a restarted daemon merges by (`daemon::merges::resume_merges`).
    let mut record = ended(AgentState::Succeeded);
    apply(&mut record, EventBody::MergeQueued { strategy: Some(Strategy::Squash) });
    assert_eq!((record.merge_state.clone(), record.merge_asked), (Some(MergeState::Queued), Some(Strategy::Squash)));
    // A journal line from before the strategy was journaled: the agent's own.
    let old: EventBody = serde_json::from_str(r#"{"type":"merge_queued"}"#).unwrap();
    assert_eq!(old, EventBody::MergeQueued { strategy: None });
    apply(&mut record, old);
    assert_eq!(record.merge_asked, None);
    // A record written before the field: none asked.
    let mut json = serde_json::to_value(&record).unwrap();
    json.as_object_mut().unwrap().remove("merge_asked");
    assert_eq!(serde_json::from_value::<AgentRecord>(json).unwrap().merge_asked, None);
    // A new task's merge starts afresh.
    apply(&mut record, EventBody::MergeQueued { strategy: Some(Strategy::Rebase) });
    apply(&mut record, sample("assigned"));
    assert_eq!(record.merge_asked, None);
}

#[test]
fn each_merge_outcome_sets_a_settled_merge_state() {
    let outcomes = [
        ("merged", MergeState::Merged { commit: "def".into(), commits: 2 }),
        ("conflict", MergeState::Conflict { files: vec!["src/lib.rs".into()] }),
        ("gate_failed", MergeState::GateFailed { code: Some(1), output: "1 test failed".into() }),
        (
            "merge_waiting",
            MergeState::Waiting { why: "main has uncommitted changes".into(), files: vec!["README.md".into()] },
        ),
        ("merge_refused", MergeState::Refused { why: "not a fast-forward".into() }),
    ];
    for (name, expected) in outcomes {
        let mut record = ended(AgentState::Succeeded);
        apply(&mut record, sample("merge_queued"));
        apply(&mut record, sample("merge_started"));
        apply(&mut record, sample(name));
        assert_eq!(record.merge_state.as_ref(), Some(&expected), "{name}");
        assert!(expected.is_settled(), "{name}");
        assert_eq!(name.trim_start_matches("merge_"), expected.as_str());
        assert_eq!(record.state, AgentState::Succeeded, "{name}");
    }
    // A waiting merge is tried again once the target is clean.
    let mut record = ended(AgentState::Succeeded);
    apply(&mut record, sample("merge_waiting"));
    apply(&mut record, sample("merge_queued"));
    assert_eq!(record.merge_state, Some(MergeState::Queued));
    apply(&mut record, sample("merged"));
    assert_eq!(record.wait_code(), 0);
}

#[test]
fn stop_requested_marks_the_stop_and_keeps_the_first_budget() {
    let mut record = running();
    apply(&mut record, sample("stop_requested"));
    assert!(record.stop_requested);
    assert_eq!((record.state, record.stopped_for), (AgentState::Running, None));
    apply(&mut record, stop(Some(BudgetKind::Cost)));
    apply(&mut record, stop(Some(BudgetKind::Tokens)));
    assert_eq!(record.stopped_for, Some(BudgetKind::Cost));
    assert_eq!(record.exceeded, None, "stopped for a budget is not spending its own");
}

#[test]
fn exited_ends_the_run_with_its_figures() {
    let mut record = running();
    let exit = event(
        5,
        A,
        EventBody::Exited {
            state: AgentState::Failed,
            code: None,
            signal: Some(9),
            reason: Some("killed by signal 9".into()),
        },
    );
    record.apply(&exit);
    assert_eq!(record.state, AgentState::Failed);
    assert_eq!((record.exit_code, record.signal), (None, Some(9)));
    assert_eq!(record.reason.as_deref(), Some("killed by signal 9"));
    assert_eq!(record.ended_at, Some(exit.ts));
    assert_eq!(record.pid, Some(10), "the last pid stays for the record");
    assert!(record.is_done());
    assert!(record.runtime_secs(Utc::now()).is_some());
}

#[test]
fn exited_after_the_agent_already_ended_is_ignored() {
    for state in [
        AgentState::Succeeded,
        AgentState::Failed,
        AgentState::Stopped,
        AgentState::BudgetExceeded,
        AgentState::TimedOut,
        AgentState::Lost,
    ] {
        let mut record = ended(state);
        let before = record.clone();
        let late =
            EventBody::Exited { state: AgentState::Lost, code: Some(7), signal: Some(9), reason: Some("late".into()) };
        apply(&mut record, late);
        apply(&mut record, exited(AgentState::Failed));
        assert_eq!(record, before, "{state:?}");
    }
}

#[test]
fn removed_marks_the_worktree_gone_and_keeps_the_state() {
    let mut record = ended(AgentState::Succeeded);
    apply(&mut record, sample("merged"));
    let mut expected = record.clone();
    apply(&mut record, sample("removed"));
    expected.removed = true;
    assert_eq!(record, expected);
    assert_eq!(record.wait_code(), 0);
}

// `corral wait`'s exit codes (README, "Exit codes").

#[test]
fn wait_codes_of_ended_states_match_the_readme() {
    let readme = [
        (AgentState::Succeeded, 0),
        (AgentState::Failed, 20),
        (AgentState::Stopped, 21),
        (AgentState::Lost, 22),
        (AgentState::BudgetExceeded, 23),
        (AgentState::TimedOut, 25),
    ];
    for (state, code) in readme {
        assert!(state.is_terminal());
        assert_eq!(state.wait_code(), code, "{state:?}");
        let record = ended(state);
        assert_eq!(record.wait_code(), code, "{state:?}");
        assert!(record.is_done(), "{state:?}");
    }
}

#[test]
fn an_agent_that_has_not_ended_waits_out_the_timeout() {
    assert_eq!(WAIT_TIMED_OUT, 124);
    let mut pending = starting();
    apply(&mut pending, EventBody::Queued {});
    for record in [pending, starting(), running()] {
        assert!(!record.state.is_terminal());
        assert_eq!(record.state.wait_code(), WAIT_TIMED_OUT, "{:?}", record.state);
        assert_eq!(record.wait_code(), WAIT_TIMED_OUT, "{:?}", record.state);
        assert!(!record.is_done(), "{:?}", record.state);
    }
}

#[test]
fn budget_exceeded_wait_code_tells_budgets_apart() {
    let readme = [
        (BudgetKind::Tokens, 23),
        (BudgetKind::OutputTokens, 23),
        (BudgetKind::DailyTokens, 23),
        (BudgetKind::Cost, 24),
        (BudgetKind::DailyCost, 24),
        (BudgetKind::Idle, 26),
    ];
    for (kind, code) in readme {
        let mut record = running();
        apply(&mut record, stop(Some(kind)));
        let state = classify_exit(None, Some(15), record.stop_requested, None, false, record.stopped_for);
        assert_eq!(state, AgentState::BudgetExceeded, "{kind:?}");
        apply(&mut record, EventBody::Exited { state, code: None, signal: Some(15), reason: None });
        assert_eq!(record.wait_code(), code, "{kind:?}");
    }
    // Spent, with no stop event saying which budget: a token budget.
    assert_eq!(ended(AgentState::BudgetExceeded).wait_code(), 23);
}

#[test]
fn timed_out_wait_code_is_25() {
    let mut record = running();
    apply(&mut record, stop(Some(BudgetKind::Wall)));
    let state = classify_exit(None, Some(15), record.stop_requested, None, false, record.stopped_for);
    assert_eq!(state, AgentState::TimedOut);
    apply(&mut record, EventBody::Exited { state, code: None, signal: Some(15), reason: None });
    assert_eq!(record.wait_code(), 25);
}

#[test]
fn succeeded_wait_code_follows_the_merge() {
    let readme = [
        (None, 0),
        (Some("merge_queued"), WAIT_TIMED_OUT),
        (Some("merge_started"), WAIT_TIMED_OUT),
        (Some("merged"), 0),
        (Some("conflict"), 27),
        (Some("gate_failed"), 28),
        (Some("merge_waiting"), 29),
        (Some("merge_refused"), 30),
    ];
    for (merge, code) in readme {
        let mut record = ended(AgentState::Succeeded);
        if let Some(name) = merge {
            apply(&mut record, sample(name));
            assert_eq!(record.merge_state.as_ref().unwrap().exit_code(), code, "{name}");
        }
        assert_eq!(record.wait_code(), code, "{merge:?}");
    }
    // Only a succeeded agent's merge decides its code.
    let mut record = ended(AgentState::Failed);
    apply(&mut record, sample("conflict"));
    assert_eq!(record.wait_code(), 20);
}

#[test]
fn is_done_waits_for_an_auto_merge_to_settle() {
    let auto = |state| {
        let mut record = running();
        record.merge.policy = crate::config::MergePolicy::Auto;
        apply(&mut record, exited(state));
        record
    };
    let mut record = auto(AgentState::Succeeded);
    assert!(!record.is_done(), "its merge is not queued yet");
    apply(&mut record, sample("merge_queued"));
    assert!(!record.is_done());
    apply(&mut record, sample("merge_started"));
    assert!(!record.is_done());
    for outcome in ["merged", "conflict", "gate_failed", "merge_waiting", "merge_refused"] {
        let mut record = auto(AgentState::Succeeded);
        apply(&mut record, sample("merge_queued"));
        apply(&mut record, sample(outcome));
        assert!(record.is_done(), "{outcome}");
    }
    // No merge follows a failure.
    assert!(auto(AgentState::Failed).is_done());
    let mut running_auto = running();
    running_auto.merge.policy = crate::config::MergePolicy::Auto;
    assert!(!running_auto.is_done());
    // A manual agent is done when it ends, unless a merge was asked for.
    let mut manual = ended(AgentState::Succeeded);
    assert_eq!(manual.merge.policy, crate::config::MergePolicy::Manual);
    assert!(manual.is_done());
    apply(&mut manual, sample("merge_queued"));
    assert!(!manual.is_done());
    apply(&mut manual, sample("merged"));
    assert!(manual.is_done());
}

// Earlier tests.

#[test]
fn runs_to_success() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, "/root/a", 1));
    assert_eq!(table.agents[&Address::parse("/root/a").unwrap()].state, AgentState::Starting);
    table.apply(&event(2, "/root/a", EventBody::Started { pid: 10, monitor_pid: 9 }));
    let exited = EventBody::Exited { state: AgentState::Succeeded, code: Some(0), signal: None, reason: None };
    table.apply(&event(3, "/root/a", exited));
    let a = &table.agents[&Address::parse("/root/a").unwrap()];
    assert_eq!(a.state, AgentState::Succeeded);
    assert_eq!(a.pid, Some(10));
    assert_eq!(a.exit_code, Some(0));
}

#[test]
fn first_exit_stands() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, "/root/a", 1));
    table.apply(&event(
        2,
        "/root/a",
        EventBody::Exited { state: AgentState::Failed, code: Some(3), signal: None, reason: None },
    ));
    table.apply(&event(
        3,
        "/root/a",
        EventBody::Exited { state: AgentState::Lost, code: None, signal: None, reason: None },
    ));
    table.apply(&event(4, "/root/a", EventBody::Started { pid: 1, monitor_pid: 1 }));
    let a = &table.agents[&Address::parse("/root/a").unwrap()];
    assert_eq!((a.state, a.exit_code), (AgentState::Failed, Some(3)));
}

#[test]
fn failed_spawn_frees_the_address() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, "/root/a", 4));
    table.apply(&event(2, "/root/a", EventBody::SpawnFailed { reason: "disk full".into() }));
    assert!(table.agents.is_empty());
    assert_eq!(table.last_id, 4);
}

#[test]
fn input_closes_only_when_every_message_is_answered() {
    let mut table = AgentTable::default();
    let mut spawned = spawned(1, "/root/c", 1);
    if let EventBody::Spawned { harness, .. } = &mut spawned.body {
        *harness = Harness::Claude;
    }
    table.apply(&spawned);
    table.apply(&event(2, "/root/c", EventBody::Started { pid: 10, monitor_pid: 9 }));
    let address = Address::parse("/root/c").unwrap();
    let result = |seq| {
        event(
            seq,
            "/root/c",
            EventBody::Result { success: true, reason: None, text: None, session_id: None, offset: 0 },
        )
    };
    let sent = |seq, id: &str| {
        let body = EventBody::MessageSent {
            message_id: id.into(),
            from: "/root".into(),
            to: "/root/c".into(),
            text: "x".into(),
            key: None,
        };
        event(seq, "/root/c", body)
    };
    let delivered = |seq, id: &str| event(seq, "/root/c", EventBody::MessageDelivered { message_id: id.into() });
    assert!(!table.agents[&address].input_done(), "no result yet");
    // Two messages arrive during the first turn.
    table.apply(&sent(3, "m1"));
    table.apply(&delivered(4, "m1"));
    table.apply(&sent(5, "m2"));
    table.apply(&delivered(6, "m2"));
    table.apply(&result(7));
    assert!(!table.agents[&address].input_done(), "a turn for the messages follows");
    table.apply(&result(8));
    assert!(table.agents[&address].input_done());
    // A message accepted but not delivered keeps the input open.
    table.apply(&sent(9, "m3"));
    assert!(!table.agents[&address].input_done());
}

#[test]
fn exit_classification() {
    assert_eq!(classify_exit(Some(0), None, false, None, false, None), AgentState::Succeeded);
    assert_eq!(classify_exit(Some(2), None, false, None, false, None), AgentState::Failed);
    assert_eq!(classify_exit(None, Some(9), false, None, false, None), AgentState::Failed);
    assert_eq!(classify_exit(None, Some(15), true, None, false, None), AgentState::Stopped);
    assert_eq!(classify_exit(Some(0), None, true, None, false, None), AgentState::Stopped);
    let failed = ResultSummary { success: false, reason: Some("error_max_turns".into()), text: None };
    let ok = ResultSummary { success: true, reason: None, text: None };
    assert_eq!(classify_exit(Some(0), None, false, Some(&failed), true, None), AgentState::Failed);
    assert_eq!(classify_exit(Some(0), None, false, Some(&ok), true, None), AgentState::Succeeded);
    assert_eq!(classify_exit(Some(0), None, false, None, true, None), AgentState::Failed);
    let wall = Some(BudgetKind::Wall);
    assert_eq!(classify_exit(None, Some(9), true, None, false, wall), AgentState::TimedOut);
    let cost = Some(BudgetKind::Cost);
    assert_eq!(classify_exit(None, Some(15), true, None, false, cost), AgentState::BudgetExceeded);
}

#[test]
fn a_notice_waits_in_the_parents_messages_once_and_is_delivered() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, "/root/lead", 1));
    table.apply(&spawned(2, "/root/lead/a", 2));
    let lead = Address::parse("/root/lead").unwrap();
    let child = Address::parse("/root/lead/a").unwrap();
    let notice = event(3, "/root/lead/a", sample("notice_sent"));
    table.apply(&notice);
    // Sent again (a redelivery after a crash): still once.
    table.apply(&notice);
    let pending = &table.agents[&lead].pending_messages;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].notice);
    assert_eq!((pending[0].message_id.as_str(), pending[0].from.as_str()), ("t-9-done", "/root/lead/a"));
    assert_eq!(table.agents[&child].notices, vec!["t-9-done".to_string()]);
    // It takes none of the parent's own message numbers.
    assert_eq!(table.agents[&lead].messages_sent, 0);
    table.apply(&event(4, "/root/lead", sample("notice_delivered")));
    assert!(table.agents[&lead].pending_messages.is_empty());
    assert!(table.agents[&lead].delivered_since_result);
}

#[test]
fn a_done_agent_is_put_away_only_once_nothing_below_it_goes_on() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, "/root/p", 1));
    table.apply(&spawned(2, "/root/p/c", 2));
    table.apply(&event(3, "/root/p", started(10)));
    table.apply(&event(4, "/root/p/c", started(11)));
    table.apply(&event(5, "/root/p", exited(AgentState::Succeeded)));
    // Its child still runs: the parent's budget and notices need it held.
    assert!(!table.can_put_away(&addr("/root/p")));
    assert!(!table.can_put_away(&addr("/root/p/c")));
    table.apply(&event(6, "/root/p/c", exited(AgentState::Failed)));
    assert!(table.can_put_away(&addr("/root/p")));
    let spot = Spot { offset: 0, len: 10 };
    assert!(table.put_away(&addr("/root/p"), spot));
    assert!(!table.put_away(&addr("/root/p"), spot), "put away twice");
    assert!(table.can_put_away(&addr("/root/p/c")));
    // Held or put away, every agent is listed once, in address order.
    table.apply(&spawned(7, "/root/a", 3));
    let order: Vec<String> = table.entries().map(|e| e.address().to_string()).collect();
    assert_eq!(order, ["/root/a", "/root/p", "/root/p/c"]);
    assert_eq!(table.len(), 3);
    assert!(table.name_taken(&addr("/root/p")));
    assert!(matches!(table.entry(&addr("/root/p")), Some(Entry::Away(_, done)) if done.state == AgentState::Succeeded));
}

#[test]
fn an_event_names_the_put_away_records_it_needs_back() {
    let mut table = AgentTable::default();
    table.apply(&spawned(1, "/root/p", 1));
    table.apply(&event(2, "/root/p", exited(AgentState::Succeeded)));
    let spot = Spot { offset: 5, len: 10 };
    table.put_away(&addr("/root/p"), spot);
    // Its own event, and a spawn below it (an ancestor of a live agent is held).
    let removed = event(3, "/root/p", EventBody::Removed { worktree: "/w".into(), deleted_branch: None });
    assert_eq!(table.put_away_for(&removed), [(addr("/root/p"), spot)]);
    assert_eq!(table.put_away_for(&spawned(4, "/root/p/c", 2)), [(addr("/root/p"), spot)]);
    assert!(table.put_away_for(&spawned(4, "/root/q", 2)).is_empty());
    // Left out, not misread, when it was not brought back.
    table.apply(&removed);
    assert!(matches!(table.entry(&addr("/root/p")), Some(Entry::Away(_, done)) if !done.removed));
    let mut record = AgentRecord::from_spawned(&spawned(1, "/root/p", 1)).unwrap();
    record.apply(&event(2, "/root/p", exited(AgentState::Succeeded)));
    table.bring_back(record);
    table.apply(&removed);
    assert!(matches!(table.entry(&addr("/root/p")), Some(Entry::Held(r)) if r.removed));
    // A new agent at a removed one's address replaces it.
    table.put_away(&addr("/root/p"), spot);
    assert!(!table.name_taken(&addr("/root/p")));
    table.apply(&spawned(5, "/root/p", 9));
    assert!(matches!(table.entry(&addr("/root/p")), Some(Entry::Held(r)) if r.id == 9));
    assert_eq!(table.len(), 1);
}
