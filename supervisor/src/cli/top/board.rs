//! What `corral top` knows: the agent table folded from the event stream
//! (with the daemon's own fold, `AgentTable::apply`, so the picture is the
//! daemon's), each agent's recent readable output and its last notable
//! event. Pure: events in, questions answered; no terminal, no socket.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use crate::cli::human;
use crate::cli::top::feed::Feed;
use crate::model::address::Address;
use crate::model::event::{Event, EventBody};
use crate::model::lifecycle::{AgentRecord, AgentTable};

/// Lines of readable output kept per agent (the pane shows the last few;
/// `l` reads the whole log).
const RECENT_LINES: usize = 400;

/// The agents as the event stream tells them.
#[derive(Debug, Default)]
pub struct Board {
    /// The fold of every event seen.
    table: AgentTable,
    /// The daemon's list, shown until the journal has been read to its end.
    snapshot: Option<Vec<AgentRecord>>,
    caught_up: bool,
    /// The daemon cannot be reached right now (why).
    pub lost: Option<String>,
    /// The last seq applied.
    pub last_seq: u64,
    recent: HashMap<Address, VecDeque<String>>,
    last_event: HashMap<Address, (DateTime<Utc>, String)>,
}

/// What a budget-holding agent's subtree has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    pub tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
}

impl Board {
    /// Takes one message of the feed.
    pub fn take(&mut self, feed: Feed) {
        match feed {
            Feed::Snapshot(agents) => {
                if !self.caught_up {
                    self.snapshot = Some(agents);
                }
                self.lost = None;
            }
            Feed::Events(events) => {
                for event in &events {
                    self.apply(event);
                }
                self.lost = None;
            }
            Feed::CaughtUp => {
                self.caught_up = true;
                self.snapshot = None;
            }
            Feed::Lost(why) => self.lost = Some(why),
        }
    }

    /// Applies one event (in journal order).
    pub fn apply(&mut self, event: &Event) {
        if event.seq <= self.last_seq && self.last_seq > 0 {
            return; // Seen already (a reconnect resumes after it).
        }
        self.last_seq = event.seq;
        self.table.apply(event);
        let Some(address) = &event.agent else { return };
        if let EventBody::Spawned { .. } = event.body {
            // A name used again after gc: a new agent, a new history.
            self.recent.remove(address);
            self.last_event.remove(address);
        }
        let lines = human::output_lines(&event.body);
        if !lines.is_empty() {
            let recent = self.recent.entry(address.clone()).or_default();
            recent.extend(lines);
            while recent.len() > RECENT_LINES {
                recent.pop_front();
            }
        }
        if human::is_notable(&event.body) {
            let text = human::one_line(&human::event_text(&event.body), 200);
            self.last_event.insert(address.clone(), (event.ts, text));
        }
    }

    /// True once the journal has been read to its end.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// The agents to show (not those gc removed), parents before children
    /// and siblings by name.
    pub fn agents(&self) -> Vec<&AgentRecord> {
        let mut agents: Vec<&AgentRecord> = match &self.snapshot {
            Some(snapshot) if !self.caught_up => snapshot.iter().collect(),
            _ => self.table.agents.values().collect(),
        };
        agents.retain(|a| !a.removed);
        agents.sort_by_key(|a| tree_key(&a.address));
        agents
    }

    pub fn agent(&self, address: &Address) -> Option<&AgentRecord> {
        self.agents().into_iter().find(|a| &a.address == address)
    }

    /// The agent's recent readable output, oldest first.
    pub fn recent(&self, address: &Address) -> impl Iterator<Item = &String> {
        self.recent.get(address).into_iter().flatten()
    }

    /// The agent's last notable event: when, and what.
    pub fn last_event(&self, address: &Address) -> Option<&(DateTime<Utc>, String)> {
        self.last_event.get(address)
    }

    /// What the agent and every agent below it spent: what its budget
    /// counts (a budget covers its subtree).
    pub fn subtree_spend(&self, address: &Address) -> Spend {
        let mut spend = Spend::default();
        for agent in self.agents().into_iter().chain(self.removed()).filter(|a| a.address.is_within(address)) {
            spend.tokens = spend.tokens.saturating_add(agent.usage.total());
            spend.output_tokens = spend.output_tokens.saturating_add(agent.usage.output);
            spend.cost = crate::model::budget::cost_sum(spend.cost, agent.cost_usd.unwrap_or(0.0));
        }
        spend
    }

    /// Agents gc removed: they spent from their parents' budgets too.
    fn removed(&self) -> impl Iterator<Item = &AgentRecord> {
        self.table.agents.values().filter(|a| a.removed && self.caught_up)
    }
}

/// Sorts an address tree-wise: by its names, one level at a time.
fn tree_key(address: &Address) -> Vec<String> {
    address.to_string().split('/').map(str::to_string).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::lifecycle::AgentState;

    /// An event of `agent` with the next seq of `board`.
    pub(crate) fn event(board: &Board, agent: &str, body: EventBody) -> Event {
        let address = Address::parse(agent).unwrap();
        Event {
            v: 1,
            seq: board.last_seq + 1,
            ts: "2026-11-21T10:00:00Z".parse().unwrap(),
            parent: address.parent(),
            agent: Some(address),
            task: Some("t-1".into()),
            body,
        }
    }

    pub(crate) fn spawned(board: &mut Board, agent: &str, tokens: Option<u64>) {
        let body = EventBody::Spawned {
            id: board.last_seq + 1,
            harness: Default::default(),
            task_text: "a task".into(),
            command: vec!["sh".into()],
            branch: format!("corral{}", agent.replace('/', ".")),
            worktree: "/tmp/w".into(),
            base: "abc".into(),
            budget: crate::model::budget::Budget { tokens, ..Default::default() },
            grace_secs: None,
            probes: Default::default(),
            restart: Default::default(),
            model: None,
            merge: Default::default(),
            sandbox: None,
            notify: None,
            meter: Default::default(),
        };
        let e = event(board, agent, body);
        board.apply(&e);
        let e = event(board, agent, EventBody::Started { pid: 42, monitor_pid: 41 });
        board.apply(&e);
    }

    #[test]
    fn the_board_is_the_fold_of_the_events() {
        let mut board = Board::default();
        spawned(&mut board, "/root/b", None);
        spawned(&mut board, "/root/a", Some(1000));
        spawned(&mut board, "/root/a-z", None);
        spawned(&mut board, "/root/a/child", None);
        let order: Vec<String> = board.agents().iter().map(|a| a.address.to_string()).collect();
        assert_eq!(order, ["/root/a", "/root/a/child", "/root/a-z", "/root/b"]);
        assert!(board.agents().iter().all(|a| a.state == AgentState::Running));

        let e = event(
            &board,
            "/root/a/child",
            EventBody::ToolUse { id: None, name: "Bash".into(), summary: "ls".into(), offset: 1 },
        );
        board.apply(&e);
        let child = Address::parse("/root/a/child").unwrap();
        assert_eq!(board.recent(&child).collect::<Vec<_>>(), ["→ Bash: ls"]);
        assert_eq!(board.last_event(&child).unwrap().1, "→ Bash: ls");

        // An event seen twice (a reconnect) counts once.
        board.apply(&e);
        assert_eq!(board.recent(&child).count(), 1);

        let e = event(
            &board,
            "/root/b",
            EventBody::Exited { state: AgentState::Stopped, code: None, signal: Some(15), reason: None },
        );
        board.apply(&e);
        let b = Address::parse("/root/b").unwrap();
        assert_eq!(board.agent(&b).unwrap().state, AgentState::Stopped);
    }

    #[test]
    fn a_budget_counts_the_subtree() {
        let mut board = Board::default();
        spawned(&mut board, "/root/a", Some(1000));
        spawned(&mut board, "/root/a/child", None);
        let usage = |input| EventBody::Usage {
            delta: Default::default(),
            total: corral_harness::TokenUsage { input, ..Default::default() },
            cost_usd: Some(0.5),
            settled: false,
            offset: 1,
            usage_log_offset: None,
        };
        let e = event(&board, "/root/a", usage(100));
        board.apply(&e);
        let e = event(&board, "/root/a/child", usage(300));
        board.apply(&e);
        let spend = board.subtree_spend(&Address::parse("/root/a").unwrap());
        assert_eq!(spend.tokens, 400);
        assert!((spend.cost - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_snapshot_shows_until_the_journal_is_read() {
        let mut board = Board::default();
        let mut other = Board::default();
        spawned(&mut other, "/root/early", None);
        board.take(Feed::Snapshot(other.agents().into_iter().cloned().collect()));
        assert_eq!(board.agents().len(), 1);
        board.take(Feed::CaughtUp);
        assert_eq!(board.agents().len(), 0, "the fold wins once caught up");
    }
}
