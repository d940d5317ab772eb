//! corral's errors: what went wrong, where, and the process exit code a
//! script can branch on. The codes are part of the interface (README,
//! "Exit codes"); change them only with the docs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of failure a client can report, each with its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Anything not listed below.
    Other,
    /// The current folder is not inside a git repository.
    NotARepository,
    /// No agent has that address.
    UnknownAddress,
    /// An agent name or address is malformed.
    InvalidName,
    /// `--base` names no commit.
    BadBaseRef,
    /// The address, or its branch, is already taken.
    Duplicate,
    /// The daemon socket or state folder belongs to another user.
    NotOwner,
    /// The daemon could not be reached or started.
    DaemonUnavailable,
    /// The agent command does not exist.
    CommandNotFound,
    /// A request the daemon cannot carry out in the current state.
    Refused,
    /// An unknown harness, or a harness launch that cannot be built.
    BadHarness,
    /// A budget that is not a positive number, or a duration corral
    /// cannot use (negative, not a number, too long).
    BadBudget,
    /// A probe, restart policy or configuration that is not valid.
    BadConfig,
    /// The state folder (the journal) cannot be written: a full disk, a
    /// read-only filesystem, an I/O error. Nothing was changed.
    StateUnwritable,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::NotARepository => 3,
            ErrorKind::UnknownAddress => 4,
            ErrorKind::InvalidName => 5,
            ErrorKind::BadBaseRef => 6,
            ErrorKind::Duplicate => 7,
            ErrorKind::NotOwner => 8,
            ErrorKind::DaemonUnavailable => 9,
            ErrorKind::CommandNotFound => 10,
            ErrorKind::Refused => 11,
            ErrorKind::BadHarness => 12,
            ErrorKind::BadBudget => 13,
            ErrorKind::BadConfig => 14,
            ErrorKind::StateUnwritable => 15,
        }
    }
}

/// An error with a kind (for the exit code) and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    pub fn other(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Other, message)
    }

    /// An I/O failure, naming the operation and the path.
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Error {
        Error::other(format!("{what} {}: {err}", path.display()))
    }

    /// A write into the state folder that failed. A full disk or a
    /// read-only filesystem is said in those words, with the folder, as
    /// [`ErrorKind::StateUnwritable`]; `then` says what did not happen
    /// ("nothing was started").
    pub fn state_write(folder: &std::path::Path, path: &std::path::Path, err: std::io::Error, then: &str) -> Error {
        let why = match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => format!("is full ({err})"),
            Some(libc::EROFS) => format!("is on a read-only filesystem ({err})"),
            _ => return Error::other(format!("cannot write {}: {err}; {then}", path.display())),
        };
        let file = path.strip_prefix(folder).unwrap_or(path).display();
        Error::new(
            ErrorKind::StateUnwritable,
            format!("the state folder {} {why}: cannot write {file}; {then}", folder.display()),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
