//! A warm worktree pool: worktrees checked out ahead of time at a base
//! commit, so a spawn renames one into place instead of checking out a
//! whole tree.
//!
//! Layout, in a folder of its own beside the agents' worktrees:
//! - `<commit>-<n>/`: a worktree of `<commit>` with a detached HEAD, made
//!   by `git worktree add --detach` (git's own checkout: filters apply
//!   as on any checkout), with hooks off;
//! - `<commit>-<n>.ready`: written once that worktree is whole. Only an
//!   entry with its marker is ever served; a folder without one is what a
//!   crash left half-made, and [`Pool::clean`] removes it.
//!
//! Guarantees:
//! - A taken worktree is what `git worktree add -b BRANCH PATH COMMIT`
//!   gives: the same files, index and HEAD (now on the new branch), and
//!   the `post-checkout` hook runs there with git's arguments, as git runs
//!   it, at the worktree's final path. Nothing of an earlier agent: an
//!   entry serves one agent and is never reused.
//! - Stale, never wrong: entries are found by the exact commit the base
//!   resolves to now, so a base that moved finds none (the spawn checks out
//!   as without a pool) and [`Pool::fill`] removes the old ones.
//! - Whoever removes an entry's marker owns the entry: taking and
//!   removing stale entries never race for one, and a marker is only
//!   touched under the pool's lock.
//!
//! Never does: decide how many entries to keep or when to fill (the
//! daemon does), or touch the agents' worktrees.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::model::error::{Error, Result};

const READY: &str = ".ready";

pub struct Pool {
    repo: PathBuf,
    dir: PathBuf,
    /// Held while a marker is read, written or removed; never while git
    /// checks out a tree.
    markers: Mutex<()>,
}

fn run(mut command: std::process::Command, what: &str) -> Result<()> {
    match command.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(Error::other(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()))),
        Err(e) => Err(Error::other(format!("{what}: cannot run git: {e}"))),
    }
}

/// The admin folder (`.git/worktrees/<id>`) of the linked worktree at
/// `path`, from its `.git` file.
fn admin_dir(path: &Path) -> Result<PathBuf> {
    let file = path.join(".git");
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io("cannot read", &file, e))?;
    let dir = text
        .strip_prefix("gitdir:")
        .map(|d| PathBuf::from(d.trim()))
        .ok_or_else(|| Error::other(format!("{} is not a linked worktree's .git file", file.display())))?;
    Ok(if dir.is_absolute() { dir } else { path.join(dir) })
}

impl Pool {
    pub fn new(repo: &Path, dir: &Path) -> Pool {
        Pool { repo: repo.to_path_buf(), dir: dir.to_path_buf(), markers: Mutex::new(()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.markers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ready entries, as (commit, folder).
    fn ready(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut ready: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(READY)?;
                let (commit, _) = stem.rsplit_once('-')?;
                Some((commit.to_string(), self.dir.join(stem)))
            })
            .collect();
        ready.sort();
        ready
    }

    /// How many entries are ready at `commit`.
    pub fn count(&self, commit: &str) -> usize {
        let _held = self.lock();
        self.ready().iter().filter(|(c, _)| c == commit).count()
    }

    /// Claims a ready entry of `commit`: its marker is gone, so nobody
    /// else will take or remove it.
    fn claim(&self, commit: &str) -> Option<PathBuf> {
        let _held = self.lock();
        let (_, path) = self.ready().into_iter().find(|(c, _)| c == commit)?;
        let marker = marker_of(&path);
        std::fs::remove_file(&marker).ok()?;
        Some(path)
    }

    /// Moves a ready worktree of `commit` to `path` on a new branch
    /// `branch` at `commit`. Ok(false): none was ready (the caller checks
    /// out as usual). On an error nothing is left at `path` and no branch
    /// is made.
    pub fn take(&self, commit: &str, branch: &str, path: &Path) -> Result<bool> {
        let Some(entry) = self.claim(commit) else { return Ok(false) };
        match self.move_into_place(&entry, commit, branch, path) {
            Ok(()) => Ok(true),
            Err(err) => {
                tracing::warn!("a pooled worktree could not be used ({err}); checking out instead");
                for folder in [path, entry.as_path()] {
                    if folder.exists() {
                        remove_linked(folder);
                    }
                }
                let repo = git2::Repository::open(&self.repo).ok();
                if let Some(mut made) = repo.as_ref().and_then(|r| r.find_branch(branch, git2::BranchType::Local).ok())
                {
                    let _ = made.delete();
                }
                Ok(false)
            }
        }
    }

    fn move_into_place(&self, entry: &Path, commit: &str, branch: &str, path: &Path) -> Result<()> {
        let repo = git2::Repository::open(&self.repo)
            .map_err(|e| Error::other(format!("cannot open {}: {}", self.repo.display(), e.message())))?;
        let oid = git2::Oid::from_str(commit).map_err(|e| Error::other(e.message().to_string()))?;
        let head = repo.find_commit(oid).map_err(|e| Error::other(e.message().to_string()))?;
        let admin = admin_dir(entry)?;
        // The entry must still be what the pool made: detached at `commit`.
        let detached = std::fs::read_to_string(admin.join("HEAD")).map_err(|e| Error::io("cannot read", &admin, e))?;
        if detached.trim() != commit {
            return Err(Error::other(format!("{} is not at {commit}", entry.display())));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
        }
        repo.branch(branch, &head, false).map_err(|e| Error::other(format!("branch {branch}: {}", e.message())))?;
        std::fs::rename(entry, path).map_err(|e| Error::io("cannot move a pooled worktree to", path, e))?;
        // git finds a worktree's folder through its admin folder's `gitdir`.
        let gitdir = admin.join("gitdir");
        std::fs::write(&gitdir, format!("{}\n", path.join(".git").display()))
            .map_err(|e| Error::io("cannot write", &gitdir, e))?;
        let head_file = admin.join("HEAD");
        std::fs::write(&head_file, format!("ref: refs/heads/{branch}\n"))
            .map_err(|e| Error::io("cannot write", &head_file, e))?;
        self.post_checkout(path, commit)
    }

    /// Runs the repository's `post-checkout` hook, if it has one, as
    /// `git worktree add` would have: in the worktree, with the null id,
    /// the new HEAD and 1 (a branch checkout).
    fn post_checkout(&self, path: &Path, commit: &str) -> Result<()> {
        let hooks = git2::Repository::open(path)
            .ok()
            .and_then(|r| r.config().ok()?.get_path("core.hooksPath").ok())
            .map(|p| if p.is_absolute() { p } else { path.join(p) })
            .unwrap_or_else(|| git2::Repository::open(&self.repo).map(|r| r.path().join("hooks")).unwrap_or_default());
        if !hooks.join("post-checkout").exists() {
            return Ok(());
        }
        let mut command = super::git_command(path);
        command.args(["hook", "run", "--ignore-missing", "post-checkout", "--"]).args([
            "0000000000000000000000000000000000000000",
            commit,
            "1",
        ]);
        run(command, "the post-checkout hook failed")
    }

    /// Makes entries of `commit` until `want` are ready, and removes the
    /// entries of every commit not in `keep` (bases that moved). Each new
    /// entry is checked out by git with hooks off, and marked ready only
    /// once whole.
    pub fn fill(&self, commit: &str, want: usize, keep: &[String]) -> Result<()> {
        self.remove_stale(keep);
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot create", &self.dir, e))?;
        while self.count(commit) < want {
            let path = self.dir.join(format!("{commit}-{}", unique()));
            let mut command = super::checkout_command(&self.repo);
            command.args(["-c", "core.hooksPath=/dev/null", "worktree", "add", "--quiet", "--detach"]);
            command.arg(&path).arg(commit);
            if let Err(err) = run(command, &format!("cannot fill the worktree pool at {}", path.display())) {
                remove_linked(&path);
                return Err(err);
            }
            let _held = self.lock();
            let marker = marker_of(&path);
            std::fs::write(&marker, b"").map_err(|e| Error::io("cannot write", &marker, e))?;
        }
        Ok(())
    }

    fn remove_stale(&self, keep: &[String]) {
        let stale: Vec<PathBuf> = {
            let _held = self.lock();
            self.ready()
                .into_iter()
                .filter(|(commit, _)| !keep.contains(commit))
                .filter(|(_, path)| std::fs::remove_file(marker_of(path)).is_ok())
                .map(|(_, path)| path)
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        for path in stale {
            remove_linked(&path);
        }
    }

    /// Removes what is not a ready entry: folders a crash left half-made
    /// (no marker) and markers without a folder. Run before the first fill.
    pub fn clean(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let _held = self.lock();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(READY) {
                Some(stem) if !self.dir.join(stem).is_dir() => {
                    let _ = std::fs::remove_file(&path);
                }
                Some(_) => {}
                None if !marker_of(&path).exists() => remove_linked(&path),
                None => {}
            }
        }
        forget_missing(&self.repo, &self.dir);
    }

    /// Removes every entry (the pool is switched off).
    pub fn empty(&self) {
        self.remove_stale(&[]);
        self.clean();
    }
}

fn marker_of(entry: &Path) -> PathBuf {
    let mut name = entry.file_name().unwrap_or_default().to_os_string();
    name.push(READY);
    entry.with_file_name(name)
}

/// A name no other entry has: the time in nanoseconds and the process id.
fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// Removes a linked worktree's folder and git's entry for it.
fn remove_linked(path: &Path) {
    if let Ok(admin) = admin_dir(path) {
        let _ = std::fs::remove_dir_all(admin);
    }
    let _ = std::fs::remove_dir_all(path);
}

/// Removes git's entries (`<common>/worktrees/<id>`) whose `gitdir` points
/// into the pool's folder at something that is gone: a crash inside `git
/// worktree add`, before its `.git` file was written.
fn forget_missing(repo: &Path, dir: &Path) {
    let Ok(common) = git2::Repository::open(repo).map(|r| r.commondir().to_path_buf()) else { return };
    let Ok(entries) = std::fs::read_dir(common.join("worktrees")) else { return };
    for admin in entries.flatten().map(|e| e.path()) {
        let Ok(gitdir) = std::fs::read_to_string(admin.join("gitdir")) else { continue };
        let gitdir = PathBuf::from(gitdir.trim());
        if gitdir.starts_with(dir) && !gitdir.exists() {
            let _ = std::fs::remove_dir_all(&admin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(dir: &Path, script: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        sh(
            dir.path(),
            "git init -q -b main . && git config user.email t@e && git config user.name t \
             && mkdir -p src/deep && echo a > a.txt && echo b > src/deep/b.txt \
             && printf '#!/bin/sh\\necho x\\n' > run.sh && chmod +x run.sh && ln -s a.txt link \
             && git add -A && git commit -qm first",
        );
        dir
    }

    /// What `git` says of a worktree: HEAD, its branch, the index, the
    /// files (with modes) and their status.
    fn describe(path: &Path) -> String {
        sh(
            path,
            "git rev-parse HEAD; git symbolic-ref HEAD; git ls-files -s; git status --porcelain --ignored; \
             find . -path ./.git -prune -o -print | sort | xargs -d '\\n' stat -c '%n %A %s'",
        )
    }

    #[test]
    fn a_pooled_worktree_is_what_a_fresh_checkout_gives() {
        let repo = repo();
        let pool_dir = repo.path().join("pool");
        let pool = Pool::new(repo.path(), &pool_dir);
        let commit = crate::git::worktree::resolve_base(repo.path(), None).unwrap();
        pool.fill(&commit, 2, std::slice::from_ref(&commit)).unwrap();
        assert_eq!(pool.count(&commit), 2);

        let pooled = repo.path().join("wt-pooled");
        assert!(pool.take(&commit, "corral/root/pooled", &pooled).unwrap());
        assert_eq!(pool.count(&commit), 1);
        let fresh = repo.path().join("wt-fresh");
        crate::git::worktree::create(repo.path(), "fresh", "corral/root/pooled-fresh", &commit, &fresh).unwrap();

        let (pooled_text, fresh_text) = (describe(&pooled), describe(&fresh));
        assert_eq!(pooled_text.replace("pooled", "X"), fresh_text.replace("pooled-fresh", "X"));
        assert!(pooled_text.contains("refs/heads/corral/root/pooled\n"), "{pooled_text}");
        // git knows it at its new path, on its branch.
        let list = sh(repo.path(), "git worktree list --porcelain");
        assert!(list.contains(&format!("worktree {}\n", pooled.display())), "{list}");
        assert!(list.contains("branch refs/heads/corral/root/pooled\n"), "{list}");
        // It commits like any worktree.
        sh(&pooled, "echo c > c.txt && git add c.txt && git commit -qm second");
        assert_eq!(sh(repo.path(), "git log --format=%s corral/root/pooled"), "second\nfirst\n");
        crate::git::worktree::remove(repo.path(), &pooled, false).unwrap();
        assert!(!sh(repo.path(), "git worktree list").contains("wt-pooled"));
    }

    #[test]
    fn a_base_that_moved_is_never_served_and_its_entries_go() {
        let repo = repo();
        let pool = Pool::new(repo.path(), &repo.path().join("pool"));
        let old = crate::git::worktree::resolve_base(repo.path(), None).unwrap();
        pool.fill(&old, 1, std::slice::from_ref(&old)).unwrap();
        sh(repo.path(), "echo moved > a.txt && git commit -qam moved");
        let new = crate::git::worktree::resolve_base(repo.path(), None).unwrap();
        assert!(!pool.take(&new, "corral/root/x", &repo.path().join("wt-x")).unwrap());
        assert!(!repo.path().join("wt-x").exists());
        pool.fill(&new, 1, std::slice::from_ref(&new)).unwrap();
        assert_eq!((pool.count(&old), pool.count(&new)), (0, 1));
        // The stale entry is gone, folder and git's entry both.
        assert_eq!(sh(repo.path(), "git worktree list").lines().count(), 2);
        let taken = repo.path().join("wt-y");
        assert!(pool.take(&new, "corral/root/y", &taken).unwrap());
        assert_eq!(std::fs::read_to_string(taken.join("a.txt")).unwrap(), "moved\n");
    }

    #[test]
    fn a_half_made_entry_is_never_served_and_is_cleaned() {
        let repo = repo();
        let dir = repo.path().join("pool");
        let pool = Pool::new(repo.path(), &dir);
        let commit = crate::git::worktree::resolve_base(repo.path(), None).unwrap();
        // A crash between `git worktree add` and the marker: a whole
        // checkout with no marker, and a marker whose folder is gone.
        std::fs::create_dir_all(&dir).unwrap();
        let half = dir.join(format!("{commit}-dead"));
        sh(repo.path(), &format!("git worktree add -q --detach {} {commit}", half.display()));
        std::fs::write(dir.join(format!("{commit}-gone.ready")), "").unwrap();
        assert_eq!(pool.count(&commit), 1, "the marker without a folder counts until cleaned");
        pool.clean();
        assert_eq!(pool.count(&commit), 0);
        assert!(!half.exists());
        assert_eq!(sh(repo.path(), "git worktree list").lines().count(), 1, "git's entry went too");
        assert!(!pool.take(&commit, "corral/root/z", &repo.path().join("wt-z")).unwrap());
    }

    #[test]
    fn the_post_checkout_hook_runs_where_the_worktree_ends_up() {
        let repo = repo();
        let log = repo.path().join("hook.log");
        let hook = repo.path().join(".git/hooks/post-checkout");
        std::fs::write(&hook, format!("#!/bin/sh\necho \"$PWD $1 $2 $3\" >> {}\n", log.display())).unwrap();
        sh(repo.path(), &format!("chmod +x {}", hook.display()));
        let pool = Pool::new(repo.path(), &repo.path().join("pool"));
        let commit = crate::git::worktree::resolve_base(repo.path(), None).unwrap();
        pool.fill(&commit, 1, std::slice::from_ref(&commit)).unwrap();
        assert!(!log.exists(), "hooks are off while the pool fills");
        let taken = repo.path().join("wt-hooked");
        assert!(pool.take(&commit, "corral/root/hooked", &taken).unwrap());
        let ran = std::fs::read_to_string(&log).unwrap();
        assert_eq!(ran, format!("{} 0000000000000000000000000000000000000000 {commit} 1\n", taken.display()));
    }
}
