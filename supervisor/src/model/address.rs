//! Agent addresses (`/root/api/tests`) and the names derived from them.
//!
//! `/root` is the caller (a person, a script, or an orchestrating agent);
//! every agent lives below it. This module owns name validation and the
//! mapping from an address to its git branch and worktree folder name, so
//! that mapping is defined once.
//!
//! Branches: git cannot hold both `corral/root/api` and
//! `corral/root/api/tests` (a ref cannot be a file and a folder at once), so
//! the segments below `/root` are joined with `.`: `/root/api` is branch
//! `corral/root/api`, `/root/api/tests` is `corral/root/api.tests`. Names
//! may not contain `.`, so the mapping is reversible. An agent under the
//! `workspace-write` sandbox gets `corral/root/api.tests/work` instead: a
//! ref folder of its own, so its sandbox can let it move its own branch and
//! no other.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::error::{Error, ErrorKind};

/// Longest agent name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A validated agent address such as `/root/api/tests`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    /// Segments below `/root`; empty for `/root` itself.
    segments: Vec<String>,
}

impl Address {
    pub fn root() -> Address {
        Address { segments: Vec::new() }
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// Parses an absolute address (`/root/...`).
    pub fn parse(text: &str) -> Result<Address, Error> {
        let rest =
            text.strip_prefix("/root").filter(|rest| rest.is_empty() || rest.starts_with('/')).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidName,
                    format!("invalid address {text:?}: an address starts with /root, for example /root/api"),
                )
            })?;
        let mut address = Address::root();
        for segment in rest.split('/').skip(1) {
            validate_name(segment)
                .map_err(|e| Error::new(ErrorKind::InvalidName, format!("invalid address {text:?}: {}", e.message)))?;
            address.segments.push(segment.to_string());
        }
        Ok(address)
    }

    /// Resolves what a person typed: an absolute address, or a path relative
    /// to `base` (the caller's own address).
    pub fn resolve(text: &str, base: &Address) -> Result<Address, Error> {
        if text.starts_with('/') {
            return Address::parse(text);
        }
        let mut address = base.clone();
        for segment in text.split('/') {
            validate_name(segment)
                .map_err(|e| Error::new(ErrorKind::InvalidName, format!("invalid address {text:?}: {}", e.message)))?;
            address.segments.push(segment.to_string());
        }
        Ok(address)
    }

    pub fn child(&self, name: &str) -> Result<Address, Error> {
        validate_name(name)?;
        let mut segments = self.segments.clone();
        segments.push(name.to_string());
        Ok(Address { segments })
    }

    pub fn parent(&self) -> Option<Address> {
        if self.segments.is_empty() {
            return None;
        }
        let mut segments = self.segments.clone();
        segments.pop();
        Some(Address { segments })
    }

    /// This address and each above it, `/root` left out: the agents whose
    /// budgets, stops and settings reach an agent here.
    pub fn agents_up(&self) -> impl Iterator<Item = Address> {
        std::iter::successors(Some(self.clone()), Address::parent).take_while(|a| !a.is_root())
    }

    /// Number of segments below `/root`: `/root/a` is 1.
    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    pub fn name(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or("root")
    }

    /// True when `self` is `other` or lies below it (segment-wise:
    /// `/root/api` is not under `/root/ap`).
    pub fn is_within(&self, other: &Address) -> bool {
        self.segments.len() >= other.segments.len() && self.segments[..other.segments.len()] == other.segments[..]
    }

    /// The segments joined with `.`: `api.tests`. Used for branch and
    /// folder names; unique per address because names contain no `.`.
    pub fn flat(&self) -> String {
        self.segments.join(".")
    }

    /// The agent's branch: `corral/root/api.tests`.
    pub fn branch(&self) -> String {
        format!("corral/root/{}", self.flat())
    }

    /// The branch of an agent whose sandbox lets it write its own branch
    /// only (`workspace-write`): `corral/root/api.tests/work`, alone in the
    /// ref folder `corral/root/api.tests/`, which is the one folder of refs
    /// its sandbox may write (Landlock's rights attach to folders, and all
    /// the `corral/root/<flat>` branches share one).
    pub fn own_folder_branch(&self) -> String {
        format!("corral/root/{}/work", self.flat())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/root")?;
        for segment in &self.segments {
            write!(f, "/{segment}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Address {
    type Error = Error;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Address::parse(&text)
    }
}

impl From<Address> for String {
    fn from(address: Address) -> String {
        address.to_string()
    }
}

/// Checks one agent name: 1 to 64 of `A-Z a-z 0-9 _ -`, not starting with `-`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let invalid = |why: String| Error::new(ErrorKind::InvalidName, why);
    if name.is_empty() {
        return Err(invalid("invalid agent name: the name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!("invalid agent name {name:?}: `.` and `..` are not names")));
    }
    if name.contains('/') {
        return Err(invalid(format!(
            "invalid agent name {name:?}: a name cannot contain `/` (use --parent to nest agents)"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "invalid agent name {:?}...: {} characters, the limit is {MAX_NAME_LEN}",
            &name[..name.char_indices().nth(16).map(|(i, _)| i).unwrap_or(name.len())],
            name.chars().count()
        )));
    }
    if name.starts_with('-') {
        return Err(invalid(format!("invalid agent name {name:?}: a name cannot start with `-`")));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(invalid(format!(
            "invalid agent name {name:?}: {bad:?} is not allowed (use letters, digits, `_` and `-`)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_up_walks_to_below_root() {
        let up: Vec<String> = Address::parse("/root/a/b").unwrap().agents_up().map(|a| a.to_string()).collect();
        assert_eq!(up, ["/root/a/b", "/root/a"]);
        assert_eq!(Address::root().agents_up().count(), 0);
    }

    #[test]
    fn parses_and_prints() {
        let a = Address::parse("/root/api/tests").unwrap();
        assert_eq!(a.to_string(), "/root/api/tests");
        assert_eq!(a.depth(), 2);
        assert_eq!(a.parent().unwrap().to_string(), "/root/api");
        assert_eq!(a.branch(), "corral/root/api.tests");
        assert_eq!(Address::parse("/root").unwrap(), Address::root());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "..", ".", "a/b", "a.b", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["/rootx", "root/a", "/root/", "/root//a", "/root/../x", "/other/a"] {
            assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
        }
        validate_name(&"x".repeat(64)).unwrap();
        validate_name("security_reviewer-2").unwrap();
    }

    #[test]
    fn within_is_segment_wise() {
        let api = Address::parse("/root/api").unwrap();
        assert!(Address::parse("/root/api/x").unwrap().is_within(&api));
        assert!(api.is_within(&api));
        assert!(!Address::parse("/root/apix").unwrap().is_within(&api));
        assert!(api.is_within(&Address::root()));
    }

    #[test]
    fn resolves_relative_to_caller() {
        let me = Address::parse("/root/lead").unwrap();
        assert_eq!(Address::resolve("kid", &me).unwrap().to_string(), "/root/lead/kid");
        assert_eq!(Address::resolve("/root/x", &me).unwrap().to_string(), "/root/x");
    }
}
