//! Which agents a `List` request answers with, a page at a time.
//!
//! The recent view (`corral ps`) is every agent not done yet and the
//! `RECENT_MAX` that ended last within `RECENT_FOR`; the rest of history
//! is counted, not sent. Every answer is a page of at most `PAGE_AGENTS`
//! agents and about `PAGE_BYTES` of JSON, in address order (parents before
//! children), with the address to go on after: no answer nears the
//! protocol's frame limit, however long the history.
//!
//! Pure: reads the table it is lent, decides nothing, writes nothing. A
//! put-away agent is listed by where its record is; the caller reads it
//! once the table is let go.

use std::ops::Bound;

use chrono::{DateTime, Duration, Utc};

use crate::model::address::Address;
use crate::model::lifecycle::{AgentRecord, AgentTable, Entry, Spot};

/// How many ended agents the recent view shows at most.
pub(super) const RECENT_MAX: usize = 100;

/// How long an ended agent stays in the recent view.
pub(super) const RECENT_FOR: Duration = Duration::hours(24);

/// Most agents in one page. A page's put-away records are read back and
/// held while its answer is written: 200 keeps that near a megabyte (500
/// took the daemon to 49-50.5 MB RSS at its peak with 100,000 done agents,
/// 2,000 past 50 MB; 200 to about 46 MB), at about 1 ms a page.
const PAGE_AGENTS: usize = 200;

/// About how much JSON one page holds at most (the frame limit is 16 MiB;
/// one record past this is still sent whole).
const PAGE_BYTES: usize = 1024 * 1024;

/// What a `List` asks for.
pub(super) struct Query {
    /// Agents `gc` removed too.
    pub all: bool,
    /// Only the recent view.
    pub recent: bool,
    /// Only this agent and those below it.
    pub under: Option<Address>,
    /// The page after this address.
    pub after: Option<Address>,
}

pub(super) struct Page {
    pub agents: Vec<Listed>,
    /// Where the next page starts after; `None` on the last page.
    pub next: Option<Address>,
    /// Agents the recent view left out.
    pub older: usize,
}

/// One agent of a page: its record, or where to read it (put away).
pub(super) enum Listed {
    Record(Box<AgentRecord>),
    Away(Address, Spot),
}

impl Listed {
    pub fn address(&self) -> &Address {
        match self {
            Listed::Record(record) => &record.address,
            Listed::Away(address, _) => address,
        }
    }
}

pub(super) fn page(table: &AgentTable, query: &Query, now: DateTime<Utc>) -> Page {
    let wanted = |a: &Entry| {
        (query.all || !a.removed()) && query.under.as_ref().is_none_or(|under| a.address().is_within(under))
    };
    // The recent view's cut: the RECENT_MAX-th latest end within RECENT_FOR.
    let cut = query.recent.then(|| {
        let mut ends: Vec<(DateTime<Utc>, u64)> = table
            .entries()
            .filter(|a| wanted(a) && a.is_done())
            .filter_map(|a| a.ended_at().filter(|t| now - *t <= RECENT_FOR).map(|t| (t, a.id())))
            .collect();
        let keep = ends.len().min(RECENT_MAX);
        if keep == 0 {
            return None;
        }
        ends.select_nth_unstable_by(keep - 1, |x, y| y.cmp(x));
        Some(ends[keep - 1])
    });
    let shown = |a: &Entry| match cut {
        None => true,
        Some(_) if !a.is_done() => true,
        Some(None) => false,
        Some(Some(cut)) => a.ended_at().is_some_and(|t| (t, a.id()) >= cut),
    };
    let older = match cut {
        None => 0,
        Some(_) => table.entries().filter(|a| wanted(a) && !shown(a)).count(),
    };
    let from = match &query.after {
        Some(after) => Bound::Excluded(after),
        None => Bound::Unbounded,
    };
    let mut agents = Vec::new();
    let mut bytes = 0;
    let mut next = None;
    for entry in table.entries_from(from) {
        if !wanted(&entry) || !shown(&entry) {
            continue;
        }
        if agents.len() == PAGE_AGENTS || bytes >= PAGE_BYTES {
            next = agents.last().map(|a: &Listed| a.address().clone());
            break;
        }
        match entry {
            Entry::Held(record) => {
                bytes += serde_json::to_vec(record).map_or(0, |json| json.len());
                agents.push(Listed::Record(Box::new(record.clone())));
            }
            Entry::Away(address, done) => {
                bytes += done.spot.len as usize;
                agents.push(Listed::Away(address.clone(), done.spot));
            }
        }
    }
    Page { agents, next, older }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Event;

    fn table(ended: usize, running: usize, now: DateTime<Utc>) -> AgentTable {
        let mut table = AgentTable::default();
        let mut seq = 0;
        let mut event = |table: &mut AgentTable, json: serde_json::Value| {
            seq += 1;
            let mut json = json;
            json["v"] = 1.into();
            json["seq"] = seq.into();
            table.apply(&serde_json::from_value::<Event>(json).unwrap());
        };
        for i in 0..ended + running {
            let agent = format!("/root/a{i:05}");
            let ts = (now - Duration::minutes((ended + running - i) as i64)).to_rfc3339();
            event(
                &mut table,
                serde_json::json!({"ts": ts, "agent": agent, "parent": "/root", "task": "t", "type": "spawned",
                    "id": i, "task_text": "x", "command": ["true"], "branch": "b", "worktree": "/w", "base": "c"}),
            );
            event(
                &mut table,
                serde_json::json!({"ts": ts, "agent": agent, "type": "started", "pid": 9, "monitor_pid": 8}),
            );
            if i < ended {
                event(
                    &mut table,
                    serde_json::json!({"ts": ts, "agent": agent, "type": "exited", "state": "succeeded", "code": 0}),
                );
                // Half of those ended are put away: the pages mix both.
                if i % 2 == 0 {
                    let address = Address::parse(&agent).unwrap();
                    assert!(table.can_put_away(&address));
                    table.put_away(&address, Spot { offset: i as u64 * 100, len: 99 });
                }
            }
        }
        table
    }

    fn is_done(listed: &Listed) -> bool {
        match listed {
            Listed::Record(record) => record.is_done(),
            Listed::Away(..) => true,
        }
    }

    #[test]
    fn the_recent_view_is_the_live_agents_and_the_latest_ended() {
        let now = Utc::now();
        let table = table(RECENT_MAX + 30, 3, now);
        let page = page(&table, &Query { all: false, recent: true, under: None, after: None }, now);
        assert_eq!(page.agents.len(), RECENT_MAX + 3);
        assert_eq!(page.older, 30);
        assert!(page.next.is_none());
        // The oldest thirty are the ones left out.
        assert_eq!(page.agents[0].address().to_string(), "/root/a00030");
        assert_eq!(page.agents.iter().filter(|a| !is_done(a)).count(), 3);
    }

    #[test]
    fn agents_that_ended_a_day_ago_leave_the_recent_view() {
        let now = Utc::now() + Duration::hours(25);
        let table = table(5, 1, Utc::now());
        let page = page(&table, &Query { all: false, recent: true, under: None, after: None }, now);
        assert_eq!((page.agents.len(), page.older), (1, 5));
    }

    #[test]
    fn everything_comes_page_by_page_in_address_order_nothing_twice() {
        let now = Utc::now();
        let table = table(PAGE_AGENTS * 2 + 7, 2, now);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = page(&table, &Query { all: true, recent: false, under: None, after: after.take() }, now);
            assert!(page.agents.len() <= PAGE_AGENTS);
            seen.extend(page.agents.iter().map(|a| a.address().clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let all: Vec<Address> = table.entries().map(|e| e.address().clone()).collect();
        assert_eq!(all.len(), PAGE_AGENTS * 2 + 9);
        assert_eq!(seen, all);
    }
}
