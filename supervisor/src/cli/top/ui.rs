//! The keys of `corral top` and what is on screen besides the agents:
//! which agent is selected, the filter, the open view (help, a pager, a
//! question), the last message. Keys come in, an [`Action`] for the
//! caller to carry out comes out; nothing here draws or talks to the
//! daemon, so every key can be tested without a terminal.

use std::time::Instant;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::cli::human::Tone;
use crate::model::address::Address;

/// The keys, as `?` lists them: (key, what it does).
pub const KEYS: &[(&str, &str)] = &[
    ("j k ↓ ↑", "move"),
    ("g G", "first, last agent"),
    ("Enter", "attach to its terminal (Ctrl-] comes back)"),
    ("l", "its full output, readable"),
    ("d", "its diff against where it started"),
    ("s, then y", "stop it and everything below it"),
    ("m", "merge its work now (or again)"),
    ("/", "filter by address (Enter keeps it, Esc drops it)"),
    ("Esc", "drop the filter"),
    ("?", "this help"),
    ("q", "quit"),
];

/// What the caller should do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Attach(Address),
    Log(Address),
    Diff(Address),
    Stop(Address),
    Merge(Address),
}

/// What has the keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The agent table.
    Normal,
    /// Typing a filter; `before` comes back on Esc.
    Filter {
        before: String,
    },
    /// Asked: stop this agent?
    ConfirmStop(Address),
    Help,
    /// A full-screen text: a log or a diff.
    Pager(Pager),
}

/// A full-screen text with a scroll position.
#[derive(Debug, Clone, PartialEq)]
pub struct Pager {
    pub title: String,
    pub lines: Vec<String>,
    /// The first line shown.
    pub top: usize,
    /// Color diff lines (`+`, `-`, `@@`).
    pub diff: bool,
}

/// Everything on screen that is not the agents themselves.
#[derive(Debug)]
pub struct Ui {
    pub mode: Mode,
    pub selected: Option<Address>,
    /// Rows shown are those whose address contains this (case ignored).
    pub filter: String,
    /// The last word to the person, with how it reads and when it came.
    pub message: Option<(String, Tone, Instant)>,
    /// How many lines the pager shows at once (set by the renderer).
    pub page: usize,
}

impl Default for Ui {
    fn default() -> Ui {
        Ui { mode: Mode::Normal, selected: None, filter: String::new(), message: None, page: 20 }
    }
}

impl Ui {
    /// True when `address` passes the filter.
    pub fn shows(&self, address: &Address) -> bool {
        self.filter.is_empty() || address.to_string().to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// Keeps the selection on a row that is shown: the same agent if it
    /// still is, else the first.
    pub fn settle(&mut self, rows: &[Address]) {
        if self.selected.as_ref().is_none_or(|s| !rows.contains(s)) {
            self.selected = rows.first().cloned();
        }
    }

    pub fn say(&mut self, text: impl Into<String>, tone: Tone) {
        self.message = Some((text.into(), tone, Instant::now()));
    }

    /// Takes a key; `rows` are the addresses shown, in order (after the
    /// filter), and `ended(address)` says whether that agent has ended.
    pub fn key(&mut self, key: KeyEvent, rows: &[Address], ended: impl Fn(&Address) -> bool) -> Action {
        let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        match &mut self.mode {
            Mode::Help => {
                self.mode = Mode::Normal;
                if ctrl_c {
                    return Action::Quit;
                }
                Action::None
            }
            Mode::Pager(pager) => {
                let last = pager.lines.len().saturating_sub(self.page.max(1));
                let page = self.page.max(1);
                match key.code {
                    _ if ctrl_c => return Action::Quit,
                    KeyCode::Char('q') | KeyCode::Esc | KeyCode::Char('l') | KeyCode::Char('d') => {
                        self.mode = Mode::Normal
                    }
                    KeyCode::Char('j') | KeyCode::Down | KeyCode::Enter => pager.top = (pager.top + 1).min(last),
                    KeyCode::Char('k') | KeyCode::Up => pager.top = pager.top.saturating_sub(1),
                    KeyCode::Char(' ') | KeyCode::PageDown | KeyCode::Char('f') => {
                        pager.top = (pager.top + page).min(last)
                    }
                    KeyCode::Char('b') | KeyCode::PageUp => pager.top = pager.top.saturating_sub(page),
                    KeyCode::Char('g') | KeyCode::Home => pager.top = 0,
                    KeyCode::Char('G') | KeyCode::End => pager.top = last,
                    _ => {}
                }
                Action::None
            }
            Mode::ConfirmStop(address) => {
                let address = address.clone();
                self.mode = Mode::Normal;
                match key.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') => {
                        self.say(format!("stopping {address}…"), Tone::Warn);
                        Action::Stop(address)
                    }
                    _ if ctrl_c => Action::Quit,
                    _ => {
                        self.say(format!("{address} was not stopped"), Tone::Plain);
                        Action::None
                    }
                }
            }
            Mode::Filter { before } => {
                match key.code {
                    _ if ctrl_c => return Action::Quit,
                    KeyCode::Enter => {
                        self.mode = Mode::Normal;
                        // Keep the filter; select the first match.
                        self.selected = None;
                    }
                    KeyCode::Esc => {
                        self.filter = std::mem::take(before);
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => self.filter.push(c),
                    _ => {}
                }
                Action::None
            }
            Mode::Normal => self.normal_key(key, ctrl_c, rows, ended),
        }
    }

    fn normal_key(
        &mut self,
        key: KeyEvent,
        ctrl_c: bool,
        rows: &[Address],
        ended: impl Fn(&Address) -> bool,
    ) -> Action {
        let at = self.selected.as_ref().and_then(|s| rows.iter().position(|r| r == s));
        let select =
            |ui: &mut Ui, index: usize| ui.selected = rows.get(index.min(rows.len().saturating_sub(1))).cloned();
        let selected = self.selected.clone().filter(|s| rows.contains(s));
        let need = |ui: &mut Ui| {
            if selected.is_none() {
                ui.say("no agent is selected", Tone::Warn);
            }
            selected.clone()
        };
        match key.code {
            _ if ctrl_c => Action::Quit,
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('j') | KeyCode::Down => {
                select(self, at.map_or(0, |i| i + 1));
                Action::None
            }
            KeyCode::Char('k') | KeyCode::Up => {
                select(self, at.map_or(0, |i| i.saturating_sub(1)));
                Action::None
            }
            KeyCode::Char('g') | KeyCode::Home => {
                select(self, 0);
                Action::None
            }
            KeyCode::Char('G') | KeyCode::End => {
                select(self, rows.len().saturating_sub(1));
                Action::None
            }
            KeyCode::PageDown => {
                select(self, at.map_or(0, |i| i + 10));
                Action::None
            }
            KeyCode::PageUp => {
                select(self, at.map_or(0, |i| i.saturating_sub(10)));
                Action::None
            }
            KeyCode::Char('/') => {
                self.mode = Mode::Filter { before: self.filter.clone() };
                self.filter.clear();
                Action::None
            }
            KeyCode::Esc => {
                self.filter.clear();
                Action::None
            }
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.mode = Mode::Help;
                Action::None
            }
            KeyCode::Enter => match need(self) {
                Some(address) if ended(&address) => {
                    self.say(format!("{address} has ended; l shows its output"), Tone::Warn);
                    Action::None
                }
                Some(address) => Action::Attach(address),
                None => Action::None,
            },
            KeyCode::Char('l') => need(self).map_or(Action::None, Action::Log),
            KeyCode::Char('d') => need(self).map_or(Action::None, Action::Diff),
            KeyCode::Char('m') => need(self).map_or(Action::None, Action::Merge),
            KeyCode::Char('s') => match need(self) {
                Some(address) if ended(&address) => {
                    self.say(format!("{address} has ended already"), Tone::Warn);
                    Action::None
                }
                Some(address) => {
                    self.mode = Mode::ConfirmStop(address);
                    Action::None
                }
                None => Action::None,
            },
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(ui: &mut Ui, rows: &[Address], code: KeyCode) -> Action {
        ui.key(KeyEvent::new(code, KeyModifiers::NONE), rows, |_| false)
    }

    fn rows() -> Vec<Address> {
        ["/root/alpha", "/root/beta", "/root/gamma"].map(|a| Address::parse(a).unwrap()).to_vec()
    }

    fn shown(ui: &Ui, rows: &[Address]) -> Vec<Address> {
        rows.iter().filter(|a| ui.shows(a)).cloned().collect()
    }

    #[test]
    fn keys_move_and_stop_asks_first() {
        let rows = rows();
        let mut ui = Ui::default();
        ui.settle(&rows);
        assert_eq!(ui.selected, Some(rows[0].clone()));
        press(&mut ui, &rows, KeyCode::Char('j'));
        press(&mut ui, &rows, KeyCode::Down);
        press(&mut ui, &rows, KeyCode::Down);
        assert_eq!(ui.selected, Some(rows[2].clone()), "stays on the last row");
        press(&mut ui, &rows, KeyCode::Char('k'));
        assert_eq!(ui.selected, Some(rows[1].clone()));

        assert_eq!(press(&mut ui, &rows, KeyCode::Char('s')), Action::None);
        assert_eq!(ui.mode, Mode::ConfirmStop(rows[1].clone()));
        assert_eq!(press(&mut ui, &rows, KeyCode::Char('n')), Action::None, "any other key cancels");
        assert_eq!(ui.mode, Mode::Normal);
        press(&mut ui, &rows, KeyCode::Char('s'));
        assert_eq!(press(&mut ui, &rows, KeyCode::Char('y')), Action::Stop(rows[1].clone()));

        assert_eq!(press(&mut ui, &rows, KeyCode::Enter), Action::Attach(rows[1].clone()));
        assert_eq!(press(&mut ui, &rows, KeyCode::Char('d')), Action::Diff(rows[1].clone()));
        assert_eq!(press(&mut ui, &rows, KeyCode::Char('q')), Action::Quit);
    }

    #[test]
    fn the_filter_keeps_on_enter_and_selects_the_first_match() {
        let rows = rows();
        let mut ui = Ui::default();
        ui.settle(&rows);
        press(&mut ui, &rows, KeyCode::Char('/'));
        for c in "GAM".chars() {
            press(&mut ui, &rows, KeyCode::Char(c));
        }
        assert_eq!(shown(&ui, &rows), [rows[2].clone()], "filters as it is typed, case ignored");
        press(&mut ui, &rows, KeyCode::Enter);
        let visible = shown(&ui, &rows);
        ui.settle(&visible);
        assert_eq!(ui.selected, Some(rows[2].clone()));
        assert_eq!(ui.mode, Mode::Normal);
        assert_eq!(ui.filter, "GAM");

        // Esc while typing brings the filter before back; Esc after drops it.
        press(&mut ui, &rows, KeyCode::Char('/'));
        press(&mut ui, &rows, KeyCode::Char('x'));
        press(&mut ui, &rows, KeyCode::Esc);
        assert_eq!(ui.filter, "GAM");
        press(&mut ui, &rows, KeyCode::Esc);
        assert_eq!(ui.filter, "");
    }

    #[test]
    fn an_ended_agent_is_not_attached_or_stopped() {
        let rows = rows();
        let mut ui = Ui::default();
        ui.settle(&rows);
        let ended = |_: &Address| true;
        assert_eq!(ui.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), &rows, ended), Action::None);
        assert!(ui.message.as_ref().unwrap().0.contains("has ended"));
        assert_eq!(ui.key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE), &rows, ended), Action::None);
        assert_eq!(ui.mode, Mode::Normal);
    }

    #[test]
    fn the_pager_scrolls_within_its_text() {
        let rows = rows();
        let mut ui = Ui { page: 10, ..Ui::default() };
        let lines = (0..25).map(|i| format!("line {i}")).collect();
        ui.mode = Mode::Pager(Pager { title: "log".into(), lines, top: 0, diff: false });
        press(&mut ui, &rows, KeyCode::Char('G'));
        let Mode::Pager(pager) = &ui.mode else { panic!() };
        assert_eq!(pager.top, 15);
        press(&mut ui, &rows, KeyCode::Char(' '));
        let Mode::Pager(pager) = &ui.mode else { panic!() };
        assert_eq!(pager.top, 15, "never past the end");
        press(&mut ui, &rows, KeyCode::Char('q'));
        assert_eq!(ui.mode, Mode::Normal);
    }
}
