//! Errors in a configuration, told as `FILE:LINE:COLUMN: KEY.PATH: message`.
//!
//! Where an error is comes from toml itself: the byte span of the error
//! ([`toml::de::Error::span`]), turned into a line and column. Under which
//! key comes from where deserializing stopped, as `serde_path_to_error`
//! tracks it. Three cases need the spans of the document's keys and values,
//! which [`locate`] asks toml for with [`toml::Spanned`]: an unknown key is
//! named by its table (the path serde stopped at ends with the key itself);
//! a probe's error, which toml places on the probe's table but which names
//! the field it is about (`period_seconds: must be ...`, the form of
//! `corral_probes::SpecError`), is moved onto that field; and a problem
//! found after deserializing (a bad role name, a policy prefix that is no
//! address) is placed on its key or value.
//!
//! Messages are serde's in the words of this file format ("key" for field,
//! "table" for map, "array" for sequence; see [`humanize`]), each on one
//! line.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file exists but could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A file holds bad TOML, an unknown key, a wrong type or a bad value.
    /// `key` is the dotted key path (empty for a syntax error); `line` and
    /// `column` count from 1.
    #[error("{}:{line}:{column}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
    /// [`Config::resolve`](super::Config::resolve) was asked for a role no
    /// file defines.
    #[error("unknown role {role:?} ({})", known_roles(known))]
    UnknownRole { role: String, known: Vec<String> },
    /// [`Config::resolve`](super::Config::resolve) was given something that
    /// is not an address.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
}

fn known_roles(known: &[String]) -> String {
    if known.is_empty() {
        "no roles are defined: add an [agents.NAME] table to corral.toml".to_owned()
    } else {
        format!("known roles: {}", known.join(", "))
    }
}

// ---------------------------------------------------------------------------
// One file's text, and placing errors in it
// ---------------------------------------------------------------------------

/// One file's text, for reading it and placing its errors.
pub(crate) struct Source<'a> {
    /// Named in every error.
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// Deserializes the whole text as `T`.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(self.text)).map_err(|err| self.toml_error(err))
    }

    /// A problem found after deserializing, with the key at `path` itself
    /// (`on_key`: a role name, a policy prefix) or with its value, placed
    /// there.
    pub(crate) fn problem(&self, path: &[&str], on_key: bool, message: String) -> ConfigError {
        let path: Vec<Segment> = path.iter().map(|key| Segment::Key((*key).to_owned())).collect();
        let span = locate(self.text, &path).map(|found| if on_key { found.key_span } else { found.span });
        self.invalid(span, &path, message)
    }

    /// A problem found after deserializing, named by the key path `key`
    /// (keys and array indexes: `agent[2].after`) and placed on the key
    /// (`on_key`) or the value at `at`: `key` itself, or a key below it
    /// where `key` has no place of its own (an item of an array).
    pub(crate) fn problem_at(&self, key: &[Segment], at: &[Segment], on_key: bool, message: String) -> ConfigError {
        let span = locate(self.text, at).map(|found| if on_key { found.key_span } else { found.span });
        self.invalid(span, key, message)
    }

    fn toml_error(&self, err: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let mut path: Vec<Segment> = err.path().iter().map_while(Segment::from_serde).collect();
        let err = err.into_inner();
        // Text that is not TOML: a syntax error, with a position but no key.
        let syntax = toml::from_str::<de::IgnoredAny>(self.text).is_err();
        let mut message = humanize(&one_line(err.message(), syntax));
        let Some(mut span) = err.span().filter(|_| !syntax) else {
            return self.invalid(err.span(), &[], message);
        };
        if locate(self.text, &path).is_some_and(|found| found.key_span == span) {
            // About the key itself (an unknown key): named by its table.
            path.pop();
        } else if let Some((field, rest)) = message.split_once(": ") {
            // A message that starts with a field below the path (a probe's
            // "period_seconds: must be ...") moves onto that field, and
            // loses the repetition when it is the path's own end.
            let field: Vec<Segment> = field.split('.').map(|part| Segment::Key(part.to_owned())).collect();
            let deeper = [path.as_slice(), field.as_slice()].concat();
            if let Some(found) = locate(self.text, &deeper) {
                span = found.span;
                path = deeper;
                message = rest.to_owned();
            } else if path.ends_with(&field) {
                message = rest.to_owned();
            }
        }
        self.invalid(Some(span), &path, message)
    }

    fn invalid(&self, span: Option<Range<usize>>, path: &[Segment], message: String) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |span| line_column(self.text, span.start));
        ConfigError::Invalid { path: self.path.to_owned(), line, column, key: format_path(path), message }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl Segment {
    /// A step of the path where deserializing stopped; `None` for a key
    /// that is not a string, where the path stops being nameable.
    fn from_serde(segment: &serde_path_to_error::Segment) -> Option<Segment> {
        match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            _ => None,
        }
    }
}

/// `agents.reviewer.budget`, `policy."/root/review".sandbox`, `args[2]`.
fn format_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    text.push_str(key);
                } else {
                    text.push_str(&format!("{key:?}"));
                }
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

// ---------------------------------------------------------------------------
// The document's spans
// ---------------------------------------------------------------------------

/// Where a key and its value are in a document.
struct Found {
    key_span: Range<usize>,
    /// The value's span; the key's for a table that is only implied
    /// (`agents` in `[agents.reviewer]`), for which toml has none.
    span: Range<usize>,
}

/// Where the key at `path` (which ends with a key) and its value are, as
/// toml gives them through [`toml::Spanned`]; `None` when the document has
/// no such key. A `Spanned` value fails on an implied table, so the value
/// is asked for with its span first and, when that fails, without.
fn locate(text: &str, path: &[Segment]) -> Option<Found> {
    let walk = |spanned| AlongPath { path, spanned }.deserialize(toml::Deserializer::new(text));
    match walk(true) {
        Ok(found) => found,
        Err(_) => walk(false).ok().flatten(),
    }
}

/// Reads a document down `path` only, skipping everything else, and the
/// value at its end as `Spanned` when `spanned`.
struct AlongPath<'a> {
    path: &'a [Segment],
    spanned: bool,
}

impl<'de> DeserializeSeed<'de> for AlongPath<'_> {
    type Value = Option<Found>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Found>, D::Error> {
        match self.path.first() {
            Some(Segment::Key(_)) => deserializer.deserialize_map(self),
            Some(Segment::Index(_)) => deserializer.deserialize_seq(self),
            None => de::IgnoredAny::deserialize(deserializer).map(|_| None),
        }
    }
}

impl<'de> Visitor<'de> for AlongPath<'_> {
    type Value = Option<Found>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table or an array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Found>, A::Error> {
        let Some((Segment::Key(wanted), rest)) = self.path.split_first() else { return Ok(None) };
        let mut found = None;
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if key.get_ref() != wanted {
                map.next_value::<de::IgnoredAny>()?;
            } else if !rest.is_empty() {
                found = map.next_value_seed(AlongPath { path: rest, ..self })?;
            } else if self.spanned {
                let span = map.next_value::<Spanned<de::IgnoredAny>>()?.span();
                found = Some(Found { key_span: key.span(), span });
            } else {
                map.next_value::<de::IgnoredAny>()?;
                found = Some(Found { key_span: key.span(), span: key.span() });
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Found>, A::Error> {
        let Some((Segment::Index(wanted), rest)) = self.path.split_first() else { return Ok(None) };
        let mut found = None;
        for index in 0.. {
            // An item has no key of its own: only a key below it is found.
            if index == *wanted && !rest.is_empty() {
                match seq.next_element_seed(AlongPath { path: rest, ..self })? {
                    Some(item) => found = item,
                    None => break,
                }
            } else if seq.next_element::<de::IgnoredAny>()?.is_none() {
                break;
            }
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// A message on one line: a TOML syntax error's lines joined with `; `;
/// another message (a regex error with its caret drawing) as its first and
/// last lines.
fn one_line(message: &str, syntax: bool) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    match lines.as_slice() {
        _ if syntax => lines.join("; "),
        [] => String::new(),
        [line] => (*line).to_owned(),
        [first, .., last] => format!("{first} {last}"),
    }
}

/// serde's messages in the words of this file format: "key" for field,
/// "table" for map or struct, "array" for sequence, names without backticks.
fn humanize(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            return format!("unknown key {name:?} ({})", expected_names(expected, "keys"));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((name, expected)) = rest.split_once('`') {
            return format!("unknown value {name:?} ({})", expected_names(expected, "values"));
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            return format!("missing key {name:?}");
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {}", expected_kind(expected), found_kind(found));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let found = found.strip_prefix("integer `").and_then(|n| n.strip_suffix('`')).unwrap_or(found);
            let expected = match expected {
                "u8" => "an integer from 0 to 255".to_owned(),
                "u16" => "an integer from 0 to 65535".to_owned(),
                "u32" => format!("an integer from 0 to {}", u32::MAX),
                "u64" | "usize" => "a non-negative integer".to_owned(),
                other => expected_kind(other),
            };
            return format!("expected {expected}, found {found}");
        }
    }
    message.to_owned()
}

/// ", expected one of `a`, `b`" → "expected one of: a, b".
fn expected_names(rest: &str, what: &str) -> String {
    let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    if names.is_empty() {
        format!("no {what} are allowed here")
    } else {
        format!("expected one of: {}", names.join(", "))
    }
}

fn expected_kind(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        other if other.starts_with("struct ") || other.starts_with("enum ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

fn found_kind(found: &str) -> &'static str {
    let kind = found.split([' ', '`']).next().unwrap_or(found);
    match kind {
        "boolean" => "a boolean",
        "integer" => "an integer",
        "floating" => "a float",
        "string" | "character" => "a string",
        "sequence" => "an array",
        "map" => "a table",
        _ => "another kind of value",
    }
}
