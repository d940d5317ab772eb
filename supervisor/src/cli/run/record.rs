//! A run on disk: its record (`<state>/runs/<id>.json`) and the lock of
//! its name (`<state>/runs/<name>.lock`).
//!
//! The record is made by the client that starts the run (with the plan:
//! the run file checked and its variables replaced) and from then on
//! written only by the run's driver, each time whole: a temporary file,
//! fsynced, renamed over the old one. A reader never sees half a record.
//!
//! The lock is an `flock` held by the driver for its life, exclusive for
//! `overlap = "skip"` and `"wait"`, shared for `"allow"`: the kernel drops
//! it when the driver dies however it dies, so a killed run never blocks
//! the next one.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::file::{Overlap, RunFile};
use super::report::Report;
use crate::model::error::{Error, ErrorKind, Result};
use crate::sys::paths::StateDir;

/// The version of the record and of the JSON report.
pub const RUN_VERSION: u32 = 1;

/// Where a run stands, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Made; its driver is starting.
    Starting,
    /// Its driver waits for the lock (`overlap = "wait"`).
    Waiting,
    Running,
    /// Every agent succeeded (and merged, where it merges).
    Succeeded,
    /// It ended, and not every agent succeeded.
    Failed,
    /// Stopped on request (SIGINT or SIGTERM to `corral run`, `corral stop`).
    Stopped,
    /// It ran past its `timeout`.
    TimedOut,
    /// Its `budget` was spent.
    BudgetExceeded,
    /// A run of the same name was still going (`overlap = "skip"`).
    Skipped,
    /// Its driver ended before the run did (killed, or lost with its
    /// machine): `corral run --resume ID` finishes it. Never written:
    /// told from a record that is not final and a driver that ended.
    Interrupted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Waiting => "waiting",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Stopped => "stopped",
            RunState::TimedOut => "timed_out",
            RunState::BudgetExceeded => "budget_exceeded",
            RunState::Skipped => "skipped",
            RunState::Interrupted => "interrupted",
        }
    }

    /// Ended: nothing more happens to the run unless it is resumed.
    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Starting | RunState::Waiting | RunState::Running)
    }
}

/// Why a planned agent was never spawned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NotRun {
    /// An agent it runs after did not succeed (or did not merge).
    Skipped { why: String },
    /// The daemon refused its spawn (a command not found, a budget...).
    Refused { why: String, code: i32 },
}

/// One run, as `<state>/runs/<id>.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub v: u32,
    /// The run id, `NAME-20261201T030000Z`.
    pub run: String,
    /// The run file, as given (absolute).
    pub file: PathBuf,
    /// The driver's address; the agents live below it.
    pub address: String,
    pub started: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<DateTime<Utc>>,
    pub state: RunState,
    /// The run's exit code, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// `--var`s, and the built-ins as they were at the start.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The file, checked, with its variables replaced.
    pub plan: RunFile,
    /// Agents the driver decided not to spawn, by name.
    #[serde(default)]
    pub not_run: BTreeMap<String, NotRun>,
    /// The report, once final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

impl RunRecord {
    pub fn overlap(&self) -> Overlap {
        self.plan.overlap
    }
}

/// The runs folder of a repository.
pub struct Runs {
    dir: PathBuf,
}

impl Runs {
    pub fn new(state: &StateDir) -> Runs {
        Runs { dir: state.dir.join("runs") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io("cannot create", &self.dir, e))
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Makes a new record with a fresh id (`NAME-STAMP`, or `NAME-STAMP-N`
    /// when a run of that name already started in that second): the id is
    /// taken by linking a whole written file to its name, which fails if
    /// the name exists, so two clients can never take one id.
    pub fn create_record(&self, make: impl Fn(&str) -> RunRecord, name: &str, stamp: &str) -> Result<RunRecord> {
        self.create()?;
        for n in 1..1000 {
            let id = if n == 1 { format!("{name}-{stamp}") } else { format!("{name}-{stamp}-{n}") };
            let record = make(&id);
            let temp = self.write_temp(&record)?;
            let taken = std::fs::hard_link(&temp, self.path(&id));
            let _ = std::fs::remove_file(&temp);
            match taken {
                Ok(()) => return Ok(record),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("cannot write", &self.path(&id), e)),
            }
        }
        Err(Error::other(format!("too many runs named {name} started at {stamp}")))
    }

    /// Replaces the record, whole (temporary file, fsync, rename).
    pub fn save(&self, record: &RunRecord) -> Result<()> {
        self.create()?;
        let temp = self.write_temp(record)?;
        let path = self.path(&record.run);
        std::fs::rename(&temp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            Error::io("cannot write", &path, e)
        })?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn write_temp(&self, record: &RunRecord) -> Result<PathBuf> {
        let temp = self.dir.join(format!(".{}.{}.tmp", record.run, std::process::id()));
        let bytes = serde_json::to_vec_pretty(record).expect("a run record serializes");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.write_all(b"\n")?;
                file.sync_all()
            })
            .map_err(|e| Error::io("cannot write", &temp, e))?;
        Ok(temp)
    }

    pub fn load(&self, id: &str) -> Result<RunRecord> {
        // An id is an agent name: never a path out of the runs folder.
        if crate::model::address::validate_name(id).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidName,
                format!("{id:?} is not a run id (one looks like nightly-20261201T030000Z; see `corral runs`)"),
            ));
        }
        let path = self.path(id);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::new(ErrorKind::UnknownAddress, format!("no run {id} (see `corral runs`)"))
            }
            _ => Error::io("cannot read", &path, e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::other(format!("{}: not a run record: {e}", path.display())))
    }

    /// Every record, oldest first; unreadable ones are left out.
    pub fn all(&self) -> Vec<RunRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut records: Vec<RunRecord> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        records.sort_by(|a: &RunRecord, b: &RunRecord| a.started.cmp(&b.started).then_with(|| a.run.cmp(&b.run)));
        records
    }

    fn lock_file(&self, name: &str) -> Result<std::fs::File> {
        self.create()?;
        let path = self.dir.join(format!("{name}.lock"));
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot open", &path, e))
    }

    /// Takes the lock of runs named `name` if it is free now: exclusive
    /// (`skip`, `wait`) or shared (`allow`). `None`: another run holds it.
    pub fn try_lock(&self, name: &str, overlap: Overlap) -> Result<Option<RunLock>> {
        let arg = match overlap {
            Overlap::Allow => FlockArg::LockSharedNonblock,
            Overlap::Skip | Overlap::Wait => FlockArg::LockExclusiveNonblock,
        };
        match Flock::lock(self.lock_file(name)?, arg) {
            Ok(guard) => Ok(Some(RunLock { _guard: guard })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(Error::other(format!("cannot lock the runs named {name}: {e}"))),
        }
    }

    /// Takes the lock, waiting (polling, so that `give_up` is heard) until
    /// it is free; `None` if `give_up` said so first.
    pub fn lock(&self, name: &str, overlap: Overlap, give_up: impl Fn() -> bool) -> Result<Option<RunLock>> {
        loop {
            if let Some(lock) = self.try_lock(name, overlap)? {
                return Ok(Some(lock));
            }
            if give_up() {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// A held run lock; dropping it (or dying) releases it.
pub struct RunLock {
    _guard: Flock<std::fs::File>,
}
