//! Git worktrees and branches for agents.
//!
//! Worktrees and branches (merges are `merge`'s). A worktree is made whole or not at all: if
//! any step fails, the branch, the folder and git's administrative entry
//! made so far are removed again. Removal never throws away work: a
//! worktree with uncommitted changes is kept unless forced.
//!
//! git2's `Repository` is `Send` but not `Sync`: every function opens its
//! own, and callers run these on blocking threads.

use std::path::{Path, PathBuf};

use crate::model::error::{Error, ErrorKind, Result};

/// What `create` made.
#[derive(Debug, Clone)]
pub struct Created {
    pub base_commit: String,
    pub path: PathBuf,
}

fn open(repo: &Path) -> Result<git2::Repository> {
    git2::Repository::open(repo)
        .map_err(|e| Error::other(format!("cannot open the repository {}: {}", repo.display(), e.message())))
}

/// Resolves `base` (default HEAD) to a commit id, or says why not.
pub fn resolve_base(repo: &Path, base: Option<&str>) -> Result<String> {
    let repo = open(repo)?;
    let spec = base.unwrap_or("HEAD");
    let object = repo.revparse_single(spec).map_err(|_| {
        if base.is_none() {
            Error::new(ErrorKind::BadBaseRef, "the repository has no commits yet: make a first commit, or pass --base")
        } else {
            Error::new(ErrorKind::BadBaseRef, format!("--base {spec:?} names no commit in this repository"))
        }
    })?;
    let commit = object
        .peel_to_commit()
        .map_err(|_| Error::new(ErrorKind::BadBaseRef, format!("--base {spec:?} does not point at a commit")))?;
    Ok(commit.id().to_string())
}

/// Fails if `branch` already exists.
pub fn ensure_branch_free(repo: &Path, branch: &str) -> Result<()> {
    let repo = open(repo)?;
    if repo.find_branch(branch, git2::BranchType::Local).is_ok() {
        return Err(Error::new(
            ErrorKind::Duplicate,
            format!("branch {branch} already exists (an earlier agent's work is kept there); delete it with `git branch -D {branch}` or pick another name"),
        ));
    }
    Ok(())
}

/// The current branch of the repository's main worktree, if any.
pub fn current_branch(repo: &Path) -> Option<String> {
    let repo = open(repo).ok()?;
    let head = repo.head().ok()?;
    head.shorthand().map(str::to_string).filter(|_| head.is_branch())
}

/// Makes branch `branch` at `base_commit` and a worktree for it at `path`.
/// All or nothing.
///
/// It runs `git worktree add` when git is installed: git checks out a large
/// tree with about half libgit2's CPU (libgit2 looks up attributes with two
/// `realpath` calls per file), and it applies what the person's git does on
/// checkout (Git LFS and other filters, the post-checkout hook), which
/// libgit2 skips. Without git, libgit2 makes it. `name` names git's entry
/// for the worktree in the libgit2 case; git names it after the folder.
pub fn create(repo_path: &Path, name: &str, branch: &str, base_commit: &str, path: &Path) -> Result<Created> {
    let repo = open(repo_path)?;
    if path.exists() {
        return Err(Error::new(
            ErrorKind::Duplicate,
            format!("the worktree folder {} already exists; remove it or pick another name", path.display()),
        ));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
    }
    if repo.find_branch(branch, git2::BranchType::Local).is_ok() {
        return Err(Error::new(ErrorKind::Duplicate, format!("branch {branch} already exists")));
    }
    let made = super::checkout_command(repo_path)
        .args(["worktree", "add", "--quiet", "-b", branch])
        .arg(path)
        .arg(base_commit)
        .output();
    let result = match made {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        // No git on this machine: libgit2 it is.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_with_libgit2(&repo, name, branch, base_commit, path)
        }
        Err(e) => Err(format!("cannot run git: {e}")),
    };
    match result {
        Ok(()) => Ok(Created { base_commit: base_commit.to_string(), path: path.to_path_buf() }),
        Err(why) => {
            undo_create(&repo, branch, path);
            Err(Error::other(format!("cannot create the worktree {}: {why}", path.display())))
        }
    }
}

fn create_with_libgit2(
    repo: &git2::Repository,
    name: &str,
    branch: &str,
    base_commit: &str,
    path: &Path,
) -> std::result::Result<(), String> {
    let oid = git2::Oid::from_str(base_commit).map_err(|e| e.message().to_string())?;
    let commit = repo.find_commit(oid).map_err(|e| e.message().to_string())?;
    let branch_ref = repo.branch(branch, &commit, false).map_err(|e| e.message().to_string())?;
    let mut options = git2::WorktreeAddOptions::new();
    options.reference(Some(branch_ref.get()));
    repo.worktree(name, path, Some(&options)).map(|_| ()).map_err(|e| e.message().to_string())
}

/// Removes what a failed or abandoned `create` made. Only for worktrees
/// no agent has run in: the branch goes too.
pub fn discard(repo_path: &Path, branch: &str, path: &Path) -> Result<()> {
    let repo = open(repo_path)?;
    undo_create(&repo, branch, path);
    Ok(())
}

fn undo_create(repo: &git2::Repository, branch: &str, path: &Path) {
    prune_admin(repo, path);
    let _ = std::fs::remove_dir_all(path);
    if let Ok(mut b) = repo.find_branch(branch, git2::BranchType::Local) {
        let _ = b.delete();
    }
}

/// Removes git's entry for the worktree at `path` (found by its path: git
/// names entries after the folder, libgit2 after the name it was given).
fn prune_admin(repo: &git2::Repository, path: &Path) {
    let Ok(names) = repo.worktrees() else { return };
    let wanted = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    for name in names.iter().flatten() {
        let Ok(worktree) = repo.find_worktree(name) else { continue };
        let at = worktree.path().canonicalize().unwrap_or_else(|_| worktree.path().to_path_buf());
        if at == wanted || worktree.path() == path {
            let mut options = git2::WorktreePruneOptions::new();
            options.valid(true).working_tree(true).locked(true);
            let _ = worktree.prune(Some(&mut options));
            let _ = std::fs::remove_dir_all(repo.path().join("worktrees").join(name));
        }
    }
}

/// Files in the worktree that are modified or untracked (not ignored).
pub fn uncommitted(path: &Path) -> Result<Vec<String>> {
    let repo = git2::Repository::open(path)
        .map_err(|e| Error::other(format!("cannot open the worktree {}: {}", path.display(), e.message())))?;
    let mut options = git2::StatusOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false);
    let statuses = repo.statuses(Some(&mut options)).map_err(|e| Error::other(e.message().to_string()))?;
    Ok(statuses.iter().filter_map(|s| s.path().map(str::to_string)).collect())
}

/// Removes the worktree folder and git's entry for it; the branch stays.
/// Refuses when the worktree holds uncommitted work, unless `force`.
pub fn remove(repo_path: &Path, path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        let dirty = uncommitted(path)?;
        if !dirty.is_empty() {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "{} has uncommitted changes ({}{}); commit them or use --force",
                    path.display(),
                    dirty.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    if dirty.len() > 3 { ", ..." } else { "" }
                ),
            ));
        }
    }
    let repo = open(repo_path)?;
    // git's entry first, while the folder still names it.
    prune_admin(&repo, path);
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| Error::io("cannot remove", path, e))?;
    }
    Ok(())
}

/// Removes git lock files that a killed process left behind: the lock of
/// branch `branch` and the index locks of the main checkout and the linked
/// worktrees, when older than `before` (so a git command running now keeps
/// its lock). Returns what it removed.
pub fn clear_stale_locks(repo_path: &Path, branch: &str, before: std::time::SystemTime) -> Vec<PathBuf> {
    let Ok(repo) = open(repo_path) else { return Vec::new() };
    let common = repo.commondir().to_path_buf();
    let mut candidates = vec![common.join("refs/heads").join(format!("{branch}.lock")), common.join("index.lock")];
    if let Ok(entries) = std::fs::read_dir(common.join("worktrees")) {
        candidates.extend(entries.flatten().map(|e| e.path().join("index.lock")));
    }
    remove_older(candidates, before)
}

/// Removes each of `locks` last changed before `before`; returns those.
fn remove_older(locks: Vec<PathBuf>, before: std::time::SystemTime) -> Vec<PathBuf> {
    locks
        .into_iter()
        .filter(|lock| {
            std::fs::metadata(lock).and_then(|m| m.modified()).is_ok_and(|at| at < before)
                && std::fs::remove_file(lock).is_ok()
        })
        .collect()
}

/// Removes the lock files a killed daemon can leave for an ended agent:
/// its worktree's index lock (taken while corral commits its leftovers)
/// and its branch's lock, when older than `before`. Only for an agent
/// whose processes are gone: nothing of its own runs git there.
pub fn clear_stale_agent_locks(
    repo_path: &Path,
    worktree: &Path,
    branch: &str,
    before: std::time::SystemTime,
) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(own) = git2::Repository::open(worktree) {
        candidates.push(own.path().join("index.lock"));
    }
    if let Ok(repo) = open(repo_path) {
        candidates.push(repo.commondir().join("refs/heads").join(format!("{branch}.lock")));
    }
    remove_older(candidates, before)
}

/// The commit a local branch points at.
pub fn branch_tip(repo_path: &Path, branch: &str) -> Option<String> {
    let repo = open(repo_path).ok()?;
    let tip = repo.find_branch(branch, git2::BranchType::Local).ok()?.get().peel_to_commit().ok()?;
    Some(tip.id().to_string())
}

/// Deletes a local branch (its commits stay in the object store until git
/// collects them; callers decide whether that work is safe to drop).
pub fn delete_branch(repo_path: &Path, branch: &str) -> Result<()> {
    let repo = open(repo_path)?;
    let mut found = repo
        .find_branch(branch, git2::BranchType::Local)
        .map_err(|e| Error::other(format!("branch {branch}: {}", e.message())))?;
    found.delete().map_err(|e| Error::other(format!("cannot delete branch {branch}: {}", e.message())))
}

/// Number of commits on `branch` that `base` does not have.
pub fn commits_ahead(repo_path: &Path, branch: &str, base: &str) -> Result<usize> {
    let repo = open(repo_path)?;
    let tip = repo
        .find_branch(branch, git2::BranchType::Local)
        .and_then(|b| b.get().peel_to_commit())
        .map_err(|e| Error::other(format!("branch {branch}: {}", e.message())))?;
    let base = git2::Oid::from_str(base).map_err(|e| Error::other(e.message().to_string()))?;
    let (ahead, _) = repo.graph_ahead_behind(tip.id(), base).map_err(|e| Error::other(e.message().to_string()))?;
    Ok(ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_with_commit() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join("README"), "hi\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("README")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(Some("HEAD"), &sig, &sig, "first", &tree, &[]).unwrap();
        dir
    }

    #[test]
    fn creates_and_removes() {
        let repo = repo_with_commit();
        let wts = tempfile::tempdir().unwrap();
        let base = resolve_base(repo.path(), None).unwrap();
        let path = wts.path().join("a");
        create(repo.path(), "corral-a", "corral/root/a", &base, &path).unwrap();
        assert!(path.join("README").exists());
        assert!(ensure_branch_free(repo.path(), "corral/root/a").is_err());

        std::fs::write(path.join("new.txt"), "x").unwrap();
        let err = remove(repo.path(), &path, false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Refused);
        assert!(err.message.contains("new.txt"), "{err}");
        remove(repo.path(), &path, true).unwrap();
        assert!(git2::Repository::open(repo.path()).unwrap().worktrees().unwrap().is_empty());
        assert!(!path.exists());
        // The branch is kept.
        assert!(ensure_branch_free(repo.path(), "corral/root/a").is_err());
    }

    #[test]
    fn failed_create_leaves_nothing() {
        let repo = repo_with_commit();
        let base = resolve_base(repo.path(), None).unwrap();
        // A worktree path whose parent is a file cannot be created.
        let blocker = repo.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = create(repo.path(), "corral-b", "corral/root/b", &base, &blocker.join("wt"));
        assert!(err.is_err());
        ensure_branch_free(repo.path(), "corral/root/b").unwrap();
        assert!(git2::Repository::open(repo.path()).unwrap().worktrees().unwrap().is_empty());
    }

    #[test]
    fn bad_base_is_named() {
        let repo = repo_with_commit();
        let err = resolve_base(repo.path(), Some("no-such-ref")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadBaseRef);
        assert!(err.message.contains("no-such-ref"));
    }
}
