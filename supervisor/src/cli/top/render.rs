//! Drawing `corral top`: a title line, the agent table, the selected
//! agent's pane (its budgets as gauges, its recent output made readable),
//! and a line of keys or the last message; or a full-screen pager, or the
//! help. A pure function of the board and the UI state onto a ratatui
//! frame, laid out for 80x24 and up. Without color (`NO_COLOR`, or no
//! terminal) only bold and reverse video are used, and every gauge is
//! drawn with characters that read in black and white.

use chrono::Utc;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, LineGauge, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use crate::cli::commands::{human_count, human_secs};
use crate::cli::human::{self, Tone};
use crate::cli::top::board::Board;
use crate::cli::top::ui::{Mode, Pager, Ui, KEYS};
use crate::config::MergePolicy;
use crate::model::budget::DEFAULT_WARN_AT;
use crate::model::lifecycle::{AgentRecord, AgentState};

/// Messages stay on the last line this long, then the keys come back.
const MESSAGE_SECS: u64 = 8;

/// Styles, or none of them.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    fn tone(self, tone: Tone) -> Style {
        if !self.color {
            return Style::default();
        }
        match tone {
            Tone::Plain => Style::default(),
            Tone::Good => Style::default().fg(Color::Green),
            Tone::Warn => Style::default().fg(Color::Yellow),
            Tone::Bad => Style::default().fg(Color::Red),
            Tone::Action => Style::default().fg(Color::Cyan),
        }
    }

    fn dim(self) -> Style {
        match self.color {
            true => Style::default().fg(Color::DarkGray),
            false => Style::default(),
        }
    }

    fn bar(self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
}

/// The state's tone: how it reads at a glance.
fn state_tone(agent: &AgentRecord) -> Tone {
    match agent.state {
        AgentState::Running if agent.ready => Tone::Good,
        AgentState::Running | AgentState::Pending | AgentState::Starting => Tone::Warn,
        AgentState::Succeeded => Tone::Good,
        AgentState::Stopped => Tone::Plain,
        AgentState::Failed
        | AgentState::BudgetExceeded
        | AgentState::TimedOut
        | AgentState::LimitExceeded
        | AgentState::Lost => Tone::Bad,
    }
}

/// The state, with readiness while running and the restarts.
pub fn state_text(agent: &AgentRecord) -> String {
    let mut text = match agent.state {
        AgentState::Running if agent.paused.is_some() => "paused".to_string(),
        AgentState::Running if !agent.ready => "not ready".to_string(),
        state => state.as_str().to_string(),
    };
    if agent.restarts > 0 {
        text.push_str(&format!(" ↻{}", agent.restarts));
    }
    text
}

fn merge_text(agent: &AgentRecord) -> (String, Tone) {
    match &agent.merge_state {
        Some(merge) => {
            let tone = match merge.exit_code() {
                0 => Tone::Good,
                27 | 28 | 30 => Tone::Bad,
                _ => Tone::Warn,
            };
            (merge.as_str().to_string(), tone)
        }
        None if agent.merge.policy == MergePolicy::Auto && !agent.state.is_terminal() => ("auto".into(), Tone::Plain),
        None => ("-".into(), Tone::Plain),
    }
}

/// A gauge of `width` characters that reads without color: `██░░░`.
fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn ratio_tone(ratio: f64) -> Tone {
    if ratio >= 1.0 {
        Tone::Bad
    } else if ratio >= DEFAULT_WARN_AT {
        Tone::Warn
    } else {
        Tone::Good
    }
}

/// Used against the limit, with a gauge where there is a limit.
fn spend_cell(theme: Theme, used: String, limit: Option<(String, f64)>) -> Line<'static> {
    match limit {
        None => Line::from(used),
        Some((limit, ratio)) => Line::from(vec![
            Span::raw(format!("{used}/{limit} ")),
            Span::styled(bar(ratio, 5), theme.tone(ratio_tone(ratio))),
        ]),
    }
}

/// The agents shown, after the filter.
pub fn visible<'b>(board: &'b Board, ui: &Ui) -> Vec<&'b AgentRecord> {
    board.agents().into_iter().filter(|a| ui.shows(&a.address)).collect()
}

/// Draws everything.
pub fn draw(frame: &mut Frame, board: &Board, ui: &mut Ui, theme: Theme, repo: &str) {
    let area = frame.area();
    if let Mode::Pager(pager) = &ui.mode {
        let page = draw_pager(frame, area, pager, theme);
        ui.page = page;
        return;
    }
    let agents = visible(board, ui);
    let [title, body, status] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(4), Constraint::Length(1)]).areas(area);
    let table_height = (agents.len() as u16 + 1).clamp(2, (body.height / 2).max(2));
    let [table_area, pane_area] = Layout::vertical([Constraint::Length(table_height), Constraint::Min(2)]).areas(body);

    draw_title(frame, title, board, ui, theme, repo);
    draw_table(frame, table_area, board, ui, &agents, theme);
    let selected = ui.selected.as_ref().and_then(|s| agents.iter().find(|a| &a.address == s)).copied();
    draw_pane(frame, pane_area, board, selected, theme);
    draw_status(frame, status, ui, theme);
    if ui.mode == Mode::Help {
        draw_help(frame, area);
    }
}

fn draw_title(frame: &mut Frame, area: Rect, board: &Board, ui: &Ui, theme: Theme, repo: &str) {
    let agents = board.agents();
    let running = agents.iter().filter(|a| !a.state.is_terminal()).count();
    let mut text = format!(
        " corral top · {repo} · {} agent{}: {running} running, {} ended",
        agents.len(),
        if agents.len() == 1 { "" } else { "s" },
        agents.len() - running
    );
    if !ui.filter.is_empty() && !matches!(ui.mode, Mode::Filter { .. }) {
        text.push_str(&format!(" · filter {:?}", ui.filter));
    }
    let mut spans = vec![Span::styled(text, Style::default().add_modifier(Modifier::BOLD))];
    if let Some(why) = &board.lost {
        spans.push(Span::styled(
            format!(" · daemon unreachable, retrying: {}", human::one_line(why, 60)),
            theme.tone(Tone::Bad),
        ));
    } else if !board.caught_up() {
        spans.push(Span::styled(" · reading the journal…", theme.dim()));
    }
    let help = Span::styled(" ? help ", theme.dim());
    let [left, right] = Layout::horizontal([Constraint::Min(1), Constraint::Length(8)]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(spans)), left);
    frame.render_widget(Paragraph::new(Line::from(help)), right);
}

fn draw_table(frame: &mut Frame, area: Rect, board: &Board, ui: &Ui, agents: &[&AgentRecord], theme: Theme) {
    let now = Utc::now();
    let show_merge = agents.iter().any(|a| a.merge_state.is_some() || a.merge.policy == MergePolicy::Auto);
    let mut header = vec!["ADDRESS", "STATE", "TIME", "TOKENS", "COST"];
    if show_merge {
        header.push("MERGE");
    }
    header.push("LAST EVENT");

    let mut rows: Vec<Vec<Line<'static>>> = Vec::new();
    for agent in agents {
        let indent = "  ".repeat(agent.address.depth().saturating_sub(1));
        let spend = board.subtree_spend(&agent.address);
        let tokens = match (agent.budget.tokens, agent.budget.output_tokens) {
            (Some(limit), _) => spend_cell(
                theme,
                human_count(spend.tokens),
                Some((human_count(limit), ratio(spend.tokens as f64, limit as f64))),
            ),
            (None, Some(limit)) => spend_cell(
                theme,
                format!("{} out", human_count(spend.output_tokens)),
                Some((human_count(limit), ratio(spend.output_tokens as f64, limit as f64))),
            ),
            (None, None) => Line::from(match agent.usage.total() {
                0 => "-".to_string(),
                n => human_count(n),
            }),
        };
        // One gauge a row is enough at 80 columns: the tokens' if the agent
        // has a token budget, else the cost's (the pane has them all).
        let cost = match agent.budget.cost {
            Some(limit) if agent.budget.tokens.is_some() || agent.budget.output_tokens.is_some() => {
                Line::from(format!("{}/{}", human::usd(spend.cost), human::usd_short(limit)))
            }
            Some(limit) => {
                spend_cell(theme, human::usd(spend.cost), Some((human::usd_short(limit), ratio(spend.cost, limit))))
            }
            None => Line::from(agent.cost_usd.map_or("-".into(), human::usd)),
        };
        let last = match board.last_event(&agent.address) {
            Some((ts, text)) => Line::from(vec![
                Span::styled(format!("{:>3} ", human::ago(*ts, now)), theme.dim()),
                Span::raw(text.clone()),
            ]),
            None => Line::from(""),
        };
        let mut row = vec![
            Line::from(format!("{indent}{}", agent.address)),
            Line::from(Span::styled(state_text(agent), theme.tone(state_tone(agent)))),
            Line::from(agent.runtime_secs(now).map_or("-".into(), human_secs)),
            tokens,
            cost,
        ];
        if show_merge {
            let (text, tone) = merge_text(agent);
            row.push(Line::from(Span::styled(text, theme.tone(tone))));
        }
        row.push(last);
        rows.push(row);
    }

    // Each column as wide as its widest cell; the last event takes the rest.
    let columns = header.len();
    let mut widths: Vec<u16> = header.iter().map(|h| h.chars().count() as u16).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(columns - 1) {
            widths[i] = widths[i].max(cell.width() as u16);
        }
    }
    // The address gives way first on a narrow screen, down to 12 columns.
    let fixed: u16 = widths[1..columns - 1].iter().sum::<u16>() + columns as u16;
    let room = area.width.saturating_sub(fixed + 12);
    widths[0] = widths[0].min(room.max(12));
    let mut constraints: Vec<Constraint> = widths[..columns - 1].iter().map(|w| Constraint::Length(*w)).collect();
    constraints.push(Constraint::Fill(1));

    let selected = ui.selected.as_ref().and_then(|s| agents.iter().position(|a| &a.address == s));
    let header =
        Row::new(header.into_iter().map(|h| Cell::from(h).style(Style::default().add_modifier(Modifier::BOLD))));
    let table = Table::new(rows.into_iter().map(|cells| Row::new(cells.into_iter().map(Cell::from))), constraints)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(theme.bar());
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
    if agents.is_empty() {
        let text = match ui.filter.is_empty() {
            true => "no agents yet: `corral spawn NAME -- COMMAND` starts one",
            false => "no agent matches the filter (Esc drops it)",
        };
        let below = Rect { y: area.y + 1, height: area.height.saturating_sub(1), ..area };
        frame.render_widget(Paragraph::new(Span::styled(format!(" {text}"), theme.dim())), below);
    }
}

fn ratio(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        used / limit
    } else {
        1.0
    }
}

fn draw_pane(frame: &mut Frame, area: Rect, board: &Board, agent: Option<&AgentRecord>, theme: Theme) {
    let Some(agent) = agent else {
        frame.render_widget(Block::new().borders(Borders::TOP), area);
        return;
    };
    let now = Utc::now();
    let title = Line::from(vec![
        Span::raw(" "),
        Span::styled(agent.address.to_string(), Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(" · "),
        Span::styled(state_text(agent), theme.tone(state_tone(agent))),
        Span::raw(" "),
    ]);
    let block = Block::new().borders(Borders::TOP).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let mut facts = vec![agent.harness.to_string()];
    if let Some(model) = &agent.model {
        facts.push(model.clone());
    }
    if let Some(pid) = agent.pid.filter(|_| !agent.state.is_terminal()) {
        facts.push(format!("pid {pid}"));
    }
    if let Some(runtime) = agent.runtime_secs(now) {
        facts.push(human_secs(runtime));
    }
    match (agent.exit_code, agent.signal) {
        (Some(code), _) => facts.push(format!("exit {code}")),
        (None, Some(signal)) => facts.push(format!("signal {signal}")),
        _ => {}
    }
    facts.push(format!("branch {}", agent.branch));
    if let Some(merge) = &agent.merge_state {
        facts.push(format!("merge {}", merge_detail(merge)));
    }
    let mut header = vec![Line::from(human::truncate(&facts.join(" · "), inner.width as usize))];
    if let Some(reason) = &agent.reason {
        header.push(Line::from(Span::styled(
            human::truncate(reason, inner.width as usize),
            theme.tone(state_tone(agent)),
        )));
    }
    if !agent.task.is_empty() {
        header.push(Line::from(human::truncate(
            &format!("task: {}", human::one_line(&agent.task, 500)),
            inner.width as usize,
        )));
    }
    let gauges = gauges(board, agent);
    let gauge_rows = u16::from(!gauges.is_empty());
    let header_rows = (header.len() as u16).min(inner.height);
    let [header_area, gauge_area, output_area] = Layout::vertical([
        Constraint::Length(header_rows),
        Constraint::Length(gauge_rows.min(inner.height.saturating_sub(header_rows))),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(header), header_area);
    if !gauges.is_empty() && gauge_area.height > 0 {
        let parts = Layout::horizontal(gauges.iter().map(|_| Constraint::Fill(1))).spacing(2).split(gauge_area);
        for ((label, used, ratio), part) in gauges.into_iter().zip(parts.iter()) {
            let gauge = LineGauge::default()
                .ratio(ratio.clamp(0.0, 1.0))
                .label(format!("{label} {used}"))
                .filled_symbol("█")
                .unfilled_symbol("░")
                .filled_style(theme.tone(ratio_tone(ratio)))
                .unfilled_style(theme.dim());
            frame.render_widget(gauge, *part);
        }
    }
    let lines: Vec<&String> = board.recent(&agent.address).collect();
    let height = output_area.height as usize;
    let shown: Vec<Line> = lines[lines.len().saturating_sub(height)..]
        .iter()
        .map(|l| {
            let tone = match l.chars().next() {
                Some('→') | Some('✉') => Tone::Action,
                Some('←') if l.starts_with("← error") => Tone::Bad,
                _ if l.starts_with("result: error") => Tone::Bad,
                _ if l.starts_with("result: success") => Tone::Good,
                _ => Tone::Plain,
            };
            Line::from(Span::styled(human::truncate(l, output_area.width as usize), theme.tone(tone)))
        })
        .collect();
    if shown.is_empty() {
        let text = match agent.state {
            AgentState::Pending | AgentState::Starting => "(not started yet)",
            _ => "(no output yet; l shows the whole log)",
        };
        frame.render_widget(Paragraph::new(Span::styled(text, theme.dim())), output_area);
    } else {
        frame.render_widget(Paragraph::new(shown), output_area);
    }
}

fn merge_detail(merge: &crate::model::lifecycle::MergeState) -> String {
    use crate::model::lifecycle::MergeState;
    match merge {
        MergeState::Merged { commit, commits } => {
            format!("merged at {} ({commits} commits)", &commit[..commit.len().min(10)])
        }
        MergeState::Conflict { files } => format!("conflict in {}", files.join(", ")),
        MergeState::Waiting { why, .. } => format!("waiting: {why}"),
        MergeState::Refused { why } => format!("refused: {why}"),
        MergeState::GateFailed { code, .. } => {
            format!("gate failed (exit {})", code.map_or("?".into(), |c| c.to_string()))
        }
        other => other.as_str().to_string(),
    }
}

/// The agent's budgets as (label, figures, how much is spent).
fn gauges(board: &Board, agent: &AgentRecord) -> Vec<(String, String, f64)> {
    let budget = &agent.budget;
    let spend = board.subtree_spend(&agent.address);
    let mut gauges = Vec::new();
    if let Some(limit) = budget.tokens {
        let used = format!("{}/{}", human_count(spend.tokens), human_count(limit));
        gauges.push(("tokens".into(), used, ratio(spend.tokens as f64, limit as f64)));
    }
    if let Some(limit) = budget.output_tokens {
        let used = format!("{}/{}", human_count(spend.output_tokens), human_count(limit));
        gauges.push(("output".into(), used, ratio(spend.output_tokens as f64, limit as f64)));
    }
    if let Some(limit) = budget.cost {
        let used = format!("{}/{}", human::usd(spend.cost), human::usd(limit));
        gauges.push(("cost".into(), used, ratio(spend.cost, limit)));
    }
    if let (Some(limit), Some(runtime)) = (budget.wall, agent.runtime_secs(Utc::now())) {
        let limit = limit.as_secs_f64();
        let used = format!("{}/{}", human_secs(runtime), human_secs(limit));
        gauges.push(("time".into(), used, ratio(runtime, limit)));
    }
    gauges
}

fn draw_status(frame: &mut Frame, area: Rect, ui: &Ui, theme: Theme) {
    let line = match &ui.mode {
        Mode::Filter { .. } => Line::from(vec![
            Span::styled(format!("/{}", ui.filter), Style::default().add_modifier(Modifier::BOLD)),
            Span::styled("▏", Style::default().add_modifier(Modifier::SLOW_BLINK)),
            Span::styled("  Enter keeps the filter · Esc drops it", theme.dim()),
        ]),
        Mode::ConfirmStop(address) => Line::from(Span::styled(
            format!("Stop {address} and every agent below it? y stops it, any other key keeps it running"),
            theme.tone(Tone::Warn).add_modifier(Modifier::BOLD),
        )),
        _ => match &ui.message {
            Some((text, tone, at)) if at.elapsed().as_secs() < MESSAGE_SECS => {
                Line::from(Span::styled(text.clone(), theme.tone(*tone)))
            }
            _ => keys_line(theme),
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn keys_line(theme: Theme) -> Line<'static> {
    let keys = [("j/k", "move"), ("⏎", "attach"), ("l", "log"), ("d", "diff"), ("s", "stop"), ("m", "merge")];
    let mut spans = Vec::new();
    for (key, what) in keys.into_iter().chain([("/", "filter"), ("?", "help"), ("q", "quit")]) {
        spans.push(Span::styled(key, Style::default().add_modifier(Modifier::BOLD)));
        spans.push(Span::styled(format!(" {what}  "), theme.dim()));
    }
    Line::from(spans)
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = 64.min(area.width);
    let height = (KEYS.len() as u16 + 4).min(area.height);
    let popup = Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!(" {key:<10}"), Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(format!(" {what}")),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(" any key closes this"));
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" corral top: keys ")), popup);
}

/// Draws the pager; returns how many lines of text it shows at once.
fn draw_pager(frame: &mut Frame, area: Rect, pager: &Pager, theme: Theme) -> usize {
    let [title, body, status] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(1), Constraint::Length(1)]).areas(area);
    frame.render_widget(
        Paragraph::new(Span::styled(format!(" {}", pager.title), Style::default().add_modifier(Modifier::BOLD)))
            .style(theme.bar()),
        title,
    );
    let height = body.height as usize;
    let lines: Vec<Line> = pager
        .lines
        .iter()
        .skip(pager.top)
        .take(height)
        .map(|l| {
            let tone = match pager.diff {
                true if l.starts_with("+++") || l.starts_with("---") => Tone::Plain,
                true if l.starts_with('+') => Tone::Good,
                true if l.starts_with('-') => Tone::Bad,
                true if l.starts_with("@@") => Tone::Action,
                _ => Tone::Plain,
            };
            Line::from(Span::styled(l.replace('\t', "    "), theme.tone(tone)))
        })
        .collect();
    if lines.is_empty() {
        frame.render_widget(Paragraph::new(Span::styled(" (nothing to show)", theme.dim())), body);
    } else {
        frame.render_widget(Paragraph::new(lines), body);
    }
    let end = (pager.top + height).min(pager.lines.len());
    let position = format!("lines {}-{end} of {}", (pager.top + 1).min(end), pager.lines.len());
    let keys = "j/k scroll · space/b page · g/G start/end · q back";
    frame.render_widget(
        Paragraph::new(Line::from(vec![Span::styled(format!("{keys}   "), theme.dim()), Span::raw(position)])),
        status,
    );
    height
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;
    use crate::cli::top::board::tests::{event, spawned};
    use crate::model::address::Address;
    use crate::model::event::EventBody;

    fn screen(board: &Board, ui: &mut Ui, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, board, ui, Theme { color: false }, "repo")).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..height {
            for x in 0..width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn three_agents_fit_in_80_by_24() {
        let mut board = Board::default();
        spawned(&mut board, "/root/alpha", Some(5000));
        spawned(&mut board, "/root/beta", None);
        spawned(&mut board, "/root/beta/helper", None);
        let usage = EventBody::Usage {
            delta: Default::default(),
            total: corral_harness::TokenUsage { input: 4100, ..Default::default() },
            cost_usd: Some(0.02),
            settled: false,
            offset: 1,
            usage_log_offset: None,
        };
        let e = event(&board, "/root/alpha", usage);
        board.apply(&e);
        let e = event(
            &board,
            "/root/alpha",
            EventBody::ToolUse { id: None, name: "Bash".into(), summary: "cargo test".into(), offset: 2 },
        );
        board.apply(&e);
        let e = event(
            &board,
            "/root/beta",
            EventBody::Exited { state: AgentState::Stopped, code: None, signal: Some(15), reason: None },
        );
        board.apply(&e);
        let mut ui = Ui::default();
        let rows: Vec<Address> = visible(&board, &ui).iter().map(|a| a.address.clone()).collect();
        ui.settle(&rows);
        let text = screen(&board, &mut ui, 80, 24);
        assert!(text.contains("/root/alpha"), "{text}");
        assert!(text.contains("  /root/beta/helper"), "indented by depth:\n{text}");
        assert!(text.contains("stopped"), "{text}");
        assert!(text.contains("4100/5000 ████░"), "a gauge against the budget:\n{text}");
        assert!(text.contains("→ Bash: cargo test"), "the last event and the pane:\n{text}");
        assert!(text.contains("tokens 4100/5000"), "the pane's gauge:\n{text}");
        assert!(text.contains("q quit"), "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80);
        }

        ui.mode = Mode::Help;
        let text = screen(&board, &mut ui, 80, 24);
        assert!(text.contains("stop it and everything below it"), "{text}");
    }
}
