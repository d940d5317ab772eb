//! An agent's output log turned into events: `output` lines for a plain
//! CLI, the harness parser's events for a structured one. Owned by the
//! agent's task; after a daemon restart it resumes after the last
//! journaled line, its parser brought to the same state by reading the
//! log up to there again.

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
}

impl OutputReader {
    /// A reader that resumes after the last journaled line. The parser is
    /// brought to the same state by reading the log up to there again.
    pub(super) fn resume(record: &AgentRecord, log: PathBuf) -> OutputReader {
        let parser = record.harness.parser();
        let mut reader = OutputReader {
            cursor: LineCursor::new(log.clone(), 0),
            parser,
            limiter: Limiter::default(),
            observations: None,
            held: Vec::new(),
        };
        match reader.parser.as_mut() {
            Some(parser) if record.log_offset > 0 => {
                let _ = reader.cursor.read_each(Some(record.log_offset), false, |lines| {
                    for line in lines {
                        parser.feed_line(trim_cr(&line.bytes));
                    }
                });
            }
            _ => reader.cursor = LineCursor::new(log, record.log_offset),
        }
        reader
    }

    /// The events for the lines written since the last call, read a slice
    /// of the log at a time (a flood is never in memory whole; its events
    /// are few, the limiter sees to that).
    pub(super) fn read(&mut self, last: bool) -> std::io::Result<Vec<EventBody>> {
        let mut bodies = Vec::new();
        let OutputReader { cursor, parser, limiter, observations, .. } = self;
        cursor
            .read_each(None, last, |lines| events_of(lines, parser, limiter, observations.as_deref(), &mut bodies))?;
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
    lines: Vec<crate::sys::output::RawLine>,
    parser: &mut Option<Box<dyn corral_harness::Parser>>,
    limiter: &mut Limiter,
    observations: Option<&corral_probes::AgentObservations>,
    bodies: &mut Vec<EventBody>,
) {
    {
        if let Some(observations) = observations {
            let now = std::time::Instant::now();
            for line in &lines {
                observations.record_line(&clean_line(&line.bytes), now);
            }
        }
        for line in lines {
            let Some(parser) = parser.as_mut() else {
                let text = clean_line(&line.bytes);
                if text.is_empty() {
                    continue;
                }
                if let Some(skipped) = limiter.admit() {
                    bodies.push(EventBody::Output { text, offset: line.offset, skipped });
                }
                continue;
            };
            for event in parser.feed_line(trim_cr(&line.bytes)) {
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
                    match limiter.admit() {
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
                EventBody::Usage { delta, total, cost_usd, settled, offset } => {
                    let held_usage = self.held.iter_mut().find_map(|b| match b {
                        EventBody::Usage { delta, total, cost_usd, settled, offset } => {
                            Some((delta, total, cost_usd, settled, offset))
                        }
                        _ => None,
                    });
                    match held_usage {
                        Some((d, t, c, s, o)) => {
                            *d = d.saturating_add(delta);
                            *t = total;
                            *c = cost_usd.or(*c);
                            *s = settled;
                            *o = offset;
                        }
                        None => self.held.push(EventBody::Usage { delta, total, cost_usd, settled, offset }),
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
