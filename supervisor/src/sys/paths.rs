//! Where corral keeps things for one repository.
//!
//! ```text
//! <git common dir>/corral/          state folder, mode 0700
//!     daemon.sock                   the daemon's socket, mode 0600
//!     daemon.lock                   held (flock) by the one live daemon
//!     daemon.pid, daemon.log
//!     events.jsonl                  the event journal
//!     agents/<id>/                  one folder per agent
//!         spec.json                 what the monitor runs (command, env, cwd)
//!         output.log                everything the agent wrote to its PTY
//!         monitor.sock, monitor.pid, monitor.log
//!         exit.json                 the exit record, written by the monitor
//!         calls.jsonl, admitted.jsonl   the metering proxy's calls and admissions
//! <worktree root>/<repo>-<hash>/<flat address>   the worktrees
//! ```
//!
//! Worktrees live outside the repository's own folders (Claude Code, for
//! one, refuses to edit files under `.git`): by default under
//! `$XDG_DATA_HOME/corral/worktrees` (`~/.local/share/...`), or wherever
//! `CORRAL_WORKTREE_ROOT` points. With none of `CORRAL_WORKTREE_ROOT`,
//! `XDG_DATA_HOME` and `HOME` set, they go to `<temp dir>/corral/worktrees`,
//! a folder every user could make first: before a worktree goes there,
//! [`check_worktrees`] makes it mode 0700 and refuses it when it is not
//! ours alone.

use std::path::{Path, PathBuf};

use crate::model::error::{Error, ErrorKind, Result};

/// The paths of one repository's corral state.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// The repository's main working folder (or the common dir if bare).
    pub repo_root: PathBuf,
    /// The state folder itself.
    pub dir: PathBuf,
    /// Where this repository's agents get their worktrees.
    pub worktrees: PathBuf,
}

impl StateDir {
    /// Finds the repository that contains `start` and its state paths.
    /// Creates nothing.
    pub fn discover(start: &Path) -> Result<StateDir> {
        let repo = git2::Repository::discover(start).map_err(|_| {
            Error::new(
                ErrorKind::NotARepository,
                format!(
                    "{} is not inside a git repository (corral keeps each agent in a git worktree; run `git init` first)",
                    start.display()
                ),
            )
        })?;
        let common = repo.commondir().to_path_buf();
        let common = common.canonicalize().unwrap_or(common);
        let repo_root = if repo.is_bare() {
            common.clone()
        } else {
            // The main worktree is the parent of the common dir (`.git`).
            common.parent().map(Path::to_path_buf).unwrap_or_else(|| common.clone())
        };
        Ok(StateDir::new(repo_root, common.join("corral")))
    }

    pub fn new(repo_root: PathBuf, dir: PathBuf) -> StateDir {
        let worktrees = worktrees_for(&worktree_root(), &repo_root);
        StateDir { repo_root, dir, worktrees }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("daemon.sock")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("daemon.pid")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    pub fn journal(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }
    pub fn agents(&self) -> PathBuf {
        self.dir.join("agents")
    }
    pub fn agent(&self, id: u64) -> AgentDir {
        AgentDir { dir: self.agents().join(id.to_string()) }
    }

    /// Creates the state folder (mode 0700) if missing.
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [&self.dir, &self.agents()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("cannot create", dir, e))?;
        }
        Ok(())
    }
}

/// One agent's folder in the state folder.
#[derive(Debug, Clone)]
pub struct AgentDir {
    pub dir: PathBuf,
}

impl AgentDir {
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("output.log")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }
    pub fn monitor_pid(&self) -> PathBuf {
        self.dir.join("monitor.pid")
    }
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join("monitor.log")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
}

/// The folder under which all repositories' worktrees live.
pub fn worktree_root() -> PathBuf {
    if let Some(root) = std::env::var_os("CORRAL_WORKTREE_ROOT").filter(|v| !v.is_empty()) {
        let root = PathBuf::from(root);
        return root.canonicalize().unwrap_or(root);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")));
    data.map_or_else(shared_folder, |data| data.join("corral")).join("worktrees")
}

/// `<temp dir>/corral`: where worktrees go when nothing says where, in a
/// folder every user may write.
fn shared_folder() -> PathBuf {
    std::env::temp_dir().join("corral")
}

/// Before a worktree is made in `worktrees` (one repository's folder of a
/// worktree root): when that is under the shared `<temp dir>/corral/worktrees`,
/// makes `<temp dir>/corral` and its `worktrees` (mode 0700) and refuses
/// either if it is not a folder of ours that no one else may write.
/// Another user who made it first would read the agents' checkouts, or
/// swap a folder in them for a link elsewhere.
pub fn check_worktrees(worktrees: &Path) -> Result<()> {
    check_shared(worktrees, &shared_folder())
}

fn check_shared(worktrees: &Path, shared: &Path) -> Result<()> {
    let root = shared.join("worktrees");
    if !worktrees.starts_with(&root) {
        return Ok(());
    }
    for dir in [shared, root.as_path()] {
        private_folder(dir).map_err(|why| {
            Error::new(
                ErrorKind::NotOwner,
                format!(
                    "{} {why}; corral will not put worktrees there (set CORRAL_WORKTREE_ROOT, XDG_DATA_HOME or HOME)",
                    dir.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// Makes `dir` (mode 0700) if missing; says why an existing one is not
/// ours alone: not a folder (a link, say), another user's, or writable by
/// its group or by anyone.
fn private_folder(dir: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot be created: {e}")),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot be read: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err("is not a folder (a link, or a file)".into());
    }
    if meta.uid() != me {
        return Err(format!("is owned by uid {}, not by you (uid {me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("may be written by others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// The folder holding one repository's worktrees under a worktree root:
/// agent `/root/a/b` of that repository works in `<this>/a.b`.
pub fn worktrees_for(worktree_root: &Path, repo_root: &Path) -> PathBuf {
    worktree_root.join(repo_slug(repo_root))
}

/// `<repo name>-<8 hex digits of a hash of its path>`: readable, and two
/// repositories with the same name do not share a folder.
fn repo_slug(repo_root: &Path) -> String {
    let name = repo_root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "repo".into());
    let name: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let mut hash: u32 = 0x811c9dc5;
    for byte in repo_root.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x01000193);
    }
    format!("{name}-{hash:08x}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn the_shared_worktree_folder_is_made_private_and_refused_when_not_ours_alone() {
        let temp = tempfile::tempdir().unwrap();
        let shared = temp.path().join("corral");
        let worktrees = shared.join("worktrees").join("repo-0123abcd");
        // Missing: made, mode 0700.
        check_shared(&worktrees, &shared).unwrap();
        for dir in [&shared, &shared.join("worktrees")] {
            assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o777, 0o700, "{}", dir.display());
        }
        // Writable by others (made first by someone, say, with mode 0777).
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_shared(&worktrees, &shared).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotOwner, "{err}");
        assert!(err.message.contains("may be written by others (mode 777)"), "{err}");
        assert!(err.message.contains(&shared.display().to_string()) && err.message.contains("CORRAL_WORKTREE_ROOT"));
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A link in its place.
        std::fs::remove_dir(shared.join("worktrees")).unwrap();
        std::os::unix::fs::symlink(temp.path(), shared.join("worktrees")).unwrap();
        let err = check_shared(&worktrees, &shared).unwrap_err();
        assert!(err.message.contains("is not a folder"), "{err}");
        std::fs::remove_file(shared.join("worktrees")).unwrap();
        // Another user's (only root can make one to try).
        if nix::unistd::geteuid().is_root() {
            check_shared(&worktrees, &shared).unwrap();
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::chown(&shared.join("worktrees"), Some(nobody), None).unwrap();
            let err = check_shared(&worktrees, &shared).unwrap_err();
            assert!(err.message.contains("is owned by uid 65534"), "{err}");
        }
        // Elsewhere (the user chose the root): not looked at.
        check_shared(&temp.path().join("mine/repo-0123abcd"), &shared).unwrap();
        assert!(!temp.path().join("mine").exists(), "nothing made");
    }
}
