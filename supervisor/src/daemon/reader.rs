//! An agent's output log turned into events: `output` lines for a plain
//! CLI, the harness parser's events for a structured one. Owned by the
//! agent's task; after a daemon restart it resumes after the last
//! journaled line, its parser brought to the same state by reading the
//! log up to there again.
//!
//! For a CLI that reports usage only at the end of a run (Gemini CLI), the
//! reader also follows the session log the CLI writes as it goes
//! ([`corral_harness::Harness::usage_log`], found from the agent's
//! environment and its session id), so that live usage, and the budgets
//! that act on it, see every model call. That log is read from its start
//! whenever it is opened again; the parser counts nothing twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::event::EventBody;
use crate::model::lifecycle::AgentRecord;
use crate::sys::output::{clean_line, Limiter, LineCursor};

/// Turns an agent's output log into events: `output` lines for a plain
/// CLI, the harness parser's events for a structured one.
pub(super) struct OutputReader {
    cursor: LineCursor,
    parser: Option<Box<dyn corral_harness::Parser>>,
    limiter: Limiter,
    /// What the current run's probes see: lines, event names, activity.
    pub(super) observations: Option<Arc<corral_probes::AgentObservations>>,
    /// Events that could not be journaled and must not be lost: usage
    /// (merged into one, its deltas added up, so no token goes uncounted),
    /// results and sessions. They go first in the next flush.
    held: Vec<EventBody>,
    harness: corral_harness::Harness,
    /// The agent's environment (where its CLI keeps its session logs).
    env: BTreeMap<String, String>,
    /// The session its output last started.
    session: Option<String>,
    /// The session log followed, and the session it belongs to.
    usage_log: Option<(String, LineCursor)>,
}

/// The environment an agent was started with (its monitor's spec), empty
/// when the spec cannot be read.
pub(super) fn agent_env(spec: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read(spec)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<crate::wire::monitor::MonitorSpec>(&bytes).ok())
        .map(|spec| spec.env)
        .unwrap_or_default()
}

impl OutputReader {
    /// A reader that resumes after the last journaled line. The parser is
    /// brought to the same state by reading the log up to there again.
    pub(super) fn resume(record: &AgentRecord, log: PathBuf, env: BTreeMap<String, String>) -> OutputReader {
        let parser = record.harness.parser();
        let mut reader = OutputReader {
            cursor: LineCursor::new(log.clone(), 0),
            parser,
            limiter: Limiter::default(),
            observations: None,
            held: Vec::new(),
            harness: record.harness,
            env,
            session: record.session_id.clone(),
            usage_log: None,
        };
        match reader.parser.as_mut() {
            Some(parser) if record.log_offset > 0 => {
                let _ = reader.cursor.read_each(Some(record.log_offset), false, |lines| {
                    for line in lines {
                        parser.feed_line(trim_cr(line.bytes));
                    }
                });
            }
            _ => reader.cursor = LineCursor::new(log, record.log_offset),
        }
        // The session log as far as its usage was journaled: read again
        // into the parser, not counted again (the deltas after it are new).
        if let (Some(parser), Some((session, at))) = (reader.parser.as_mut(), &record.usage_log_at) {
            if let Some(path) = reader.harness.usage_log(&reader.env, session) {
                let mut cursor = LineCursor::new(path, 0);
                let _ = cursor.read_each(Some(*at), false, |lines| {
                    for line in lines {
                        parser.feed_usage_log_line(trim_cr(line.bytes));
                    }
                });
                reader.usage_log = Some((session.clone(), cursor));
            }
        }
        reader
    }

    /// The events for the lines written since the last call, read a slice
    /// of the log at a time (a flood is never in memory whole; its events
    /// are few, the limiter sees to that).
    pub(super) fn read(&mut self, last: bool) -> std::io::Result<Vec<EventBody>> {
        let mut bodies = Vec::new();
        let OutputReader { cursor, parser, limiter, observations, session, .. } = self;
        cursor.read_each(None, last, |lines| {
            events_of(lines, parser, limiter, observations.as_deref(), session, &mut bodies)
        })?;
        self.read_usage_log(&mut bodies, last);
        if last {
            let skipped = self.limiter.take_skipped();
            if skipped > 0 {
                // Say how many lines were left out, even with nothing after them.
                bodies.push(EventBody::Output { text: String::new(), offset: self.cursor.offset(), skipped });
            }
        }
        Ok(bodies)
    }
}

/// The events of one slice of lines, added to `bodies`.
fn events_of(
    lines: &[crate::sys::output::Line<'_>],
    parser: &mut Option<Box<dyn corral_harness::Parser>>,
    limiter: &mut Limiter,
    observations: Option<&corral_probes::AgentObservations>,
    session: &mut Option<String>,
    bodies: &mut Vec<EventBody>,
) {
    {
        // One clock reading for the slice: it is read in well under a
        // millisecond, and the limiter's rate is lines a second.
        let now = std::time::Instant::now();
        if let Some(observations) = observations {
            for line in lines {
                observations.record_line(&clean_line(line.bytes), now);
            }
        }
        for line in lines {
            let Some(parser) = parser.as_mut() else {
                // A flood's lines beyond the rate are counted, not cleaned
                // (a line of only blanks counts as nothing, as when cleaned).
                if !limiter.would_admit(now) {
                    if !line.bytes.iter().all(u8::is_ascii_whitespace) {
                        limiter.skip();
                    }
                    continue;
                }
                let text = clean_line(line.bytes);
                if text.is_empty() {
                    continue;
                }
                if let Some(skipped) = limiter.admit(now) {
                    bodies.push(EventBody::Output { text, offset: line.offset, skipped });
                }
                continue;
            };
            for event in parser.feed_line(trim_cr(line.bytes)) {
                if let corral_harness::HarnessEvent::SessionStarted { session_id: Some(id), .. } = &event {
                    *session = Some(id.clone());
                }
                let mut body = EventBody::from_harness(event, line.offset);
                if let Some(observations) = observations {
                    let now = std::time::Instant::now();
                    if let EventBody::SessionStarted { .. } = body {
                        // Claude Code's system/init: `readiness = { event = "init" }`.
                        observations.record_event("init", now);
                    }
                    observations.record_event(body.type_name(), now);
                }
                // Only chatter is rate-limited; usage, tools and results never are.
                if let EventBody::Progress { skipped, .. } = &mut body {
                    match limiter.admit(now) {
                        Some(n) => *skipped = n,
                        None => continue,
                    }
                }
                bodies.push(body);
            }
        }
    }
}

impl OutputReader {
    /// The usage in the session log written since the last call (see the
    /// module doc), after the output's own events.
    fn read_usage_log(&mut self, bodies: &mut Vec<EventBody>, last: bool) {
        let (Some(parser), Some(session)) = (self.parser.as_mut(), self.session.as_ref()) else { return };
        if self.usage_log.as_ref().is_none_or(|(followed, _)| followed != session) {
            self.usage_log =
                self.harness.usage_log(&self.env, session).map(|path| (session.clone(), LineCursor::new(path, 0)));
        }
        let Some((_, cursor)) = self.usage_log.as_mut() else { return };
        // A log that cannot be read leaves the output's own figures.
        let Ok(lines) = cursor.read(None, last) else { return };
        let offset = self.cursor.offset();
        for line in lines {
            for event in parser.feed_usage_log_line(trim_cr(&line.bytes)) {
                let mut body = EventBody::from_harness(event, offset);
                if let EventBody::Usage { usage_log_offset, .. } = &mut body {
                    *usage_log_offset = Some(line.offset);
                }
                bodies.push(body);
            }
        }
    }

    /// What was held back from a flush that could not be journaled.
    pub(super) fn take_held(&mut self) -> Vec<EventBody> {
        std::mem::take(&mut self.held)
    }

    /// Keeps, of events that could not be journaled, what must not be
    /// lost; returns how many were left out (output lines, progress, tool
    /// calls: the log keeps their bytes).
    pub(super) fn hold(&mut self, bodies: Vec<EventBody>) -> u64 {
        let mut dropped = 0;
        for body in bodies {
            match body {
                EventBody::Usage { delta, total, cost_usd, settled, offset, usage_log_offset } => {
                    let held_usage = self.held.iter_mut().find_map(|b| match b {
                        EventBody::Usage { delta, total, cost_usd, settled, offset, usage_log_offset } => {
                            Some((delta, total, cost_usd, settled, offset, usage_log_offset))
                        }
                        _ => None,
                    });
                    match held_usage {
                        Some((d, t, c, s, o, u)) => {
                            *d = d.saturating_add(delta);
                            *t = total;
                            *c = cost_usd.or(*c);
                            *s = settled;
                            *o = offset;
                            *u = usage_log_offset.or(*u);
                        }
                        None => self.held.push(EventBody::Usage {
                            delta,
                            total,
                            cost_usd,
                            settled,
                            offset,
                            usage_log_offset,
                        }),
                    }
                }
                body @ (EventBody::Result { .. } | EventBody::SessionStarted { .. }) => self.held.push(body),
                _ => dropped += 1,
            }
        }
        dropped
    }
}

pub(super) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lifecycle::AgentTable;

    #[test]
    fn a_resumed_reader_counts_none_of_the_session_log_already_journaled() {
        // Regression: after a daemon restart the Gemini CLI's chat log was
        // read again from its start, and its usage counted a second time.
        let home = tempfile::tempdir().unwrap();
        let session = "f9693f78-0000";
        let chats = home.path().join(".gemini/tmp/project/chats");
        std::fs::create_dir_all(&chats).unwrap();
        let chat = chats.join("session-2026-12-02T10-00-f9693f78.jsonl");
        let message = |id: &str| {
            format!(
                "{{\"id\":\"{id}\",\"type\":\"gemini\",\"tokens\":{{\"input\":1000,\"output\":50,\"cached\":200,\"thoughts\":4,\"tool\":0,\"total\":1054}},\"model\":\"g\"}}\n"
            )
        };
        std::fs::write(&chat, message("m1")).unwrap();
        let read_to = std::fs::metadata(&chat).unwrap().len();
        std::fs::write(&chat, format!("{}{}", message("m1"), message("m2"))).unwrap();
        let log = home.path().join("output.log");
        let init = format!("{{\"type\":\"init\",\"session_id\":\"{session}\",\"model\":\"g\"}}\n");
        std::fs::write(&log, &init).unwrap();

        let spawned = r#"{"v":1,"seq":1,"ts":"2026-12-02T10:00:00Z","agent":"/root/g","parent":"/root","task":"t-1","type":"spawned","id":1,"harness":"gemini","task_text":"t","command":["gemini"],"branch":"corral/root/g","worktree":"/tmp/wt","base":"abc"}"#;
        let mut table = AgentTable::default();
        table.apply(&serde_json::from_str(spawned).unwrap());
        let mut record = table.agents.values().next().unwrap().clone();
        record.session_id = Some(session.to_owned());
        record.log_offset = init.len() as u64;
        // m1 was journaled before the restart; m2 came after.
        record.usage_log_at = Some((session.to_owned(), read_to));
        let env = BTreeMap::from([("HOME".to_owned(), home.path().display().to_string())]);

        let mut reader = OutputReader::resume(&record, log, env);
        let counted: corral_harness::TokenUsage = reader
            .read(false)
            .unwrap()
            .iter()
            .filter_map(|b| match b {
                EventBody::Usage { delta, .. } => Some(*delta),
                _ => None,
            })
            .fold(Default::default(), corral_harness::TokenUsage::saturating_add);
        assert_eq!(counted.input, 800, "only m2 is new: {counted:?}");
    }
}
