//! The person's checkouts of a target branch, around a merge.
//!
//! Owns: finding every worktree (main and linked) that has the target
//! checked out, or is rebasing it; the dirty checks before a merge (changes
//! of the person's, files in the way, an operation in progress); moving
//! the target ref by compare-and-swap; and bringing a clean checkout's
//! files and index to the merged tree, touching only the paths the merge
//! changes, so `git status` is clean after as it was before. Never
//! computes a merge (`merge` does) or overwrites a change of the person's:
//! a checkout that is not clean is reported and left alone.

use std::collections::{BTreeSet, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, RepositoryState, Status, Tree};

use super::merge::{
    current_target, full_ref, lossy, open, os_path, state_name, Context, MergeError, MergeOutcome, Result,
};

/// Moves `name` from `from` to `to`, or fails with `TargetMoved` if it is
/// not at `from` (git's ref lock makes the check and the write one step).
pub(super) fn compare_and_swap(
    repo: &Repository,
    p: &Path,
    name: &str,
    from: Oid,
    to: Oid,
    reflog: &str,
) -> Result<()> {
    match repo.reference_matching(name, to, true, from, reflog) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), git2::ErrorCode::Modified | git2::ErrorCode::NotFound) => {
            Err(MergeError::TargetMoved { target: name.to_string(), expected: from, found: current_target(repo, name) })
        }
        Err(e) => Err(e).ctx(&format!("move {name}"), p),
    }
}

/// A worktree that has the target checked out.
pub(super) struct Checkout<'a> {
    pub(super) path: PathBuf,
    repo: Handle<'a>,
    /// HEAD is detached for a rebase of the target (git counts the target
    /// as checked out there): always busy, never written.
    pub(super) rebasing: bool,
}

/// The caller's own repository (the main checkout, whose caches are warm)
/// or one opened for a linked worktree.
enum Handle<'a> {
    Same(&'a Repository),
    Own(Repository),
}

impl std::ops::Deref for Handle<'_> {
    type Target = Repository;

    fn deref(&self) -> &Repository {
        match self {
            Handle::Same(repo) => repo,
            Handle::Own(repo) => repo,
        }
    }
}

/// Every worktree, main and linked, with `target` checked out (or being
/// rebased). Worktrees whose folder is gone are skipped. When `repo` is
/// the main checkout's repository, that one is used for it, not another.
pub(super) fn checkouts<'a>(repo: &'a Repository, p: &Path, target: &str) -> Result<Vec<Checkout<'a>>> {
    let opened = if repo.is_worktree() { Some(open(repo.commondir())?) } else { None };
    let common = opened.as_ref().unwrap_or(repo);
    let mut candidates = Vec::new();
    let names = common.worktrees().ctx("list the worktrees", p)?;
    let admin = common.path().join("worktrees");
    for name in names.iter().flatten() {
        // Most linked worktrees are agents' on branches of their own: their
        // HEAD file says so without opening a repository for each.
        if !may_have_checked_out(&admin.join(name), target) {
            continue;
        }
        let Ok(worktree) = common.find_worktree(name) else { continue };
        if worktree.validate().is_err() {
            continue;
        }
        if let Ok(linked) = Repository::open_from_worktree(&worktree) {
            candidates.push((clean_path(worktree.path()), Handle::Own(linked)));
        }
    }
    if let Some(path) = common.workdir().filter(|_| !common.is_bare()).map(clean_path) {
        candidates.insert(0, (path, opened.map_or(Handle::Same(repo), Handle::Own)));
    }
    let mut found = Vec::new();
    for (path, checkout) in candidates {
        let Ok(head) = checkout.find_reference("HEAD") else { continue };
        let on_target = head.symbolic_target_bytes() == Some(target.as_bytes());
        let rebasing = !on_target && rebase_head_name(&checkout).as_deref() == Some(target);
        drop(head);
        if on_target || rebasing {
            found.push(Checkout { path, repo: checkout, rebasing });
        }
    }
    Ok(found)
}

/// False only when the linked worktree with admin folder `admin` surely
/// has neither `target` checked out nor a rebase of it in progress: its
/// HEAD names another branch or a commit, and no rebase says `target`.
fn may_have_checked_out(admin: &Path, target: &str) -> bool {
    let Ok(head) = std::fs::read_to_string(admin.join("HEAD")) else { return true };
    if head.trim().strip_prefix("ref:").map(str::trim) == Some(target) {
        return true;
    }
    ["rebase-merge/head-name", "rebase-apply/head-name"].iter().any(|f| admin.join(f).exists())
}

fn clean_path(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The branch a rebase in progress in this worktree will update.
fn rebase_head_name(repo: &Repository) -> Option<String> {
    ["rebase-merge/head-name", "rebase-apply/head-name"]
        .iter()
        .find_map(|f| std::fs::read_to_string(repo.path().join(f)).ok())
        .map(|s| s.trim().to_string())
}

/// The folders where `target` is checked out (main and linked worktrees).
pub fn checked_out_in(repo_path: &Path, target: &str) -> Result<Vec<PathBuf>> {
    let repo = open(repo_path)?;
    Ok(checkouts(&repo, repo_path, &full_ref(target))?.into_iter().map(|c| c.path).collect())
}

/// Every path whose content differs between two commits' trees (files
/// only; a rename is a deletion and an addition).
pub(super) fn changed_paths(repo: &Repository, p: &Path, old: Oid, new: Oid) -> Result<Vec<Vec<u8>>> {
    let old_tree = repo.find_commit(old).and_then(|c| c.tree()).ctx("read the old tree", p)?;
    let new_tree = repo.find_commit(new).and_then(|c| c.tree()).ctx("read the new tree", p)?;
    let diff = repo.diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None).ctx("compare trees", p)?;
    let mut paths = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path_bytes() {
                paths.insert(path.to_vec());
            }
        }
    }
    Ok(paths.into_iter().collect())
}

const TRACKED_CHANGES: Status = Status::INDEX_NEW
    .union(Status::INDEX_MODIFIED)
    .union(Status::INDEX_DELETED)
    .union(Status::INDEX_RENAMED)
    .union(Status::INDEX_TYPECHANGE)
    .union(Status::WT_MODIFIED)
    .union(Status::WT_DELETED)
    .union(Status::WT_TYPECHANGE)
    .union(Status::WT_RENAMED)
    .union(Status::WT_UNREADABLE)
    .union(Status::CONFLICTED);

/// The tracked files the person changed (against HEAD, staged or not) and
/// the conflicts. Untracked files are not looked for: they are only a
/// change of the person's where a merge would write, which [`blockers`]
/// looks at path by path.
fn tracked_changes(checkout: &Checkout) -> Result<Vec<String>> {
    let mut options = git2::StatusOptions::new();
    options.include_untracked(false).include_ignored(false).exclude_submodules(true);
    let statuses = checkout.repo.statuses(Some(&mut options)).ctx("read the status", &checkout.path)?;
    Ok(statuses.iter().filter(|e| e.status().intersects(TRACKED_CHANGES)).map(|e| lossy(e.path_bytes())).collect())
}

const WORKTREE_CHANGES: Status = Status::WT_NEW
    .union(Status::WT_MODIFIED)
    .union(Status::WT_DELETED)
    .union(Status::WT_TYPECHANGE)
    .union(Status::WT_RENAMED)
    .union(Status::WT_UNREADABLE);

/// Of just `paths`: those whose working file differs from the index, as
/// git sees it (through the repository's filters), or are untracked.
fn worktree_changes(checkout: &Checkout, paths: &[&[u8]]) -> Result<HashSet<Vec<u8>>> {
    let mut options = git2::StatusOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false).exclude_submodules(true);
    options.disable_pathspec_match(true);
    for path in paths {
        options.pathspec(os_path(path));
    }
    let statuses = checkout.repo.statuses(Some(&mut options)).ctx("read the status", &checkout.path)?;
    Ok(statuses.iter().filter(|e| e.status().intersects(WORKTREE_CHANGES)).map(|e| e.path_bytes().to_vec()).collect())
}

/// `TargetDirty` for the first checkout of `target` where the person has
/// changed something: an operation in progress, a tracked file changed or
/// staged, a conflict. Looks at every tracked file; untracked ones count
/// only where a merge would write ([`dirty_checkout`]).
pub(super) fn changed_checkout(repo: &Repository, p: &Path, target: &str) -> Result<Option<MergeOutcome>> {
    for checkout in &checkouts(repo, p, target)? {
        let mut files = in_progress(checkout, target);
        if !checkout.rebasing {
            files.extend(tracked_changes(checkout)?);
        }
        if !files.is_empty() {
            return Ok(Some(MergeOutcome::TargetDirty {
                worktree: checkout.path.clone(),
                files: files.into_iter().collect(),
            }));
        }
    }
    Ok(None)
}

/// `TargetDirty` for the first of `checkouts` with an operation in
/// progress or files in the way of the move from `old` to `new`, whose
/// `changed` paths the move writes.
pub(super) fn dirty_checkout(
    checkouts: &[Checkout],
    target: &str,
    old: Oid,
    new: Oid,
    changed: &[Vec<u8>],
) -> Result<Option<MergeOutcome>> {
    for checkout in checkouts {
        let mut files = in_progress(checkout, target);
        if !checkout.rebasing {
            files.extend(blockers(checkout, old, new, changed)?);
        }
        if !files.is_empty() {
            return Ok(Some(MergeOutcome::TargetDirty {
                worktree: checkout.path.clone(),
                files: files.into_iter().collect(),
            }));
        }
    }
    Ok(None)
}

/// A rebase of the target, or another operation, under way in a checkout.
fn in_progress(checkout: &Checkout, target: &str) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    if checkout.rebasing {
        files.insert(format!("(a rebase of {target} is in progress)"));
    } else if checkout.repo.state() != RepositoryState::Clean {
        files.insert(format!("(a {} is in progress)", state_name(checkout.repo.state())));
    }
    files
}

type Entry = Option<(Oid, i32)>;

const GITLINK: i32 = 0o160000;
const SYMLINK: i32 = 0o120000;

fn entry_at(tree: &Tree<'_>, path: &[u8]) -> Entry {
    let entry = tree.get_path(os_path(path)).ok()?;
    matches!(entry.kind(), Some(ObjectType::Blob) | Some(ObjectType::Commit)).then(|| (entry.id(), entry.filemode()))
}

/// The paths the move from `old` to `new` writes whose index entry or
/// working file is neither as in `old` nor as in `new`, or that have an
/// untracked or ignored file or folder in the way. Empty means the
/// checkout can be brought to `new` without losing anything of the
/// person's. Independent of where HEAD points, so it serves both before
/// the ref moves and in [`recover`](super::merge::recover) after it did.
pub(super) fn blockers(checkout: &Checkout, old: Oid, new: Oid, changed: &[Vec<u8>]) -> Result<Vec<String>> {
    let repo = &checkout.repo;
    let p = &checkout.path;
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let old_tree = repo.find_commit(old).and_then(|c| c.tree()).ctx("read the old tree", p)?;
    let new_tree = repo.find_commit(new).and_then(|c| c.tree()).ctx("read the new tree", p)?;
    // Read again only if it changed on disk (libgit2 compares the file's
    // time, size and inode; git replaces the file on every write).
    let mut index = repo.index().ctx("read the index", p)?;
    index.read(false).ctx("read the index", p)?;
    // Only the paths the move writes are looked at: what else the person
    // changed is not in its way. Each working file is first compared with
    // the old and the new blob byte for byte; only the paths where that
    // fails (a filter such as an end-of-line conversion, or a real change)
    // get git's status, which is as slow over a few paths as over all.
    let changed_set: HashSet<&[u8]> = changed.iter().map(Vec::as_slice).collect();
    let mut blocked = Vec::new();
    let mut unsure = Vec::new();
    for path in changed {
        let (old_entry, new_entry) = (entry_at(&old_tree, path), entry_at(&new_tree, path));
        if [old_entry, new_entry].iter().flatten().any(|(_, mode)| *mode == GITLINK) {
            continue; // Submodules are not checked out by a merge either.
        }
        let rel = os_path(path);
        let conflicted = (1..=3).any(|stage| index.get_path(rel, stage).is_some());
        let staged = index.get_path(rel, 0).map(|e| e.id);
        let index_ok = !conflicted && (staged == old_entry.map(|e| e.0) || staged == new_entry.map(|e| e.0));
        let file_ok = [old_entry, new_entry].iter().any(|want| on_disk_is(repo, p, path, *want, &changed_set));
        match (index_ok && folders_ok(p, path, &changed_set), file_ok) {
            (true, true) => {}
            // As in the index, unless git's status says otherwise.
            (true, false) if staged.is_some() => unsure.push(path.as_slice()),
            _ => blocked.push(lossy(path)),
        }
    }
    if !unsure.is_empty() {
        let differ = worktree_changes(checkout, &unsure)?;
        blocked.extend(unsure.iter().filter(|path| differ.contains(**path)).map(|path| lossy(path)));
        blocked.sort();
    }
    Ok(blocked)
}

/// No folder on the way to `path` is a file or link, unless the merge
/// changes that path too.
fn folders_ok(workdir: &Path, path: &[u8], changed: &HashSet<&[u8]>) -> bool {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| &path[..i])
        .all(|folder| changed.contains(folder) || !is_there_but_not_a_folder(&workdir.join(os_path(folder))))
}

fn is_there_but_not_a_folder(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir())
}

/// Whether the working file at `path` is `want` (`None`: nothing there,
/// or a folder holding only files the merge changes).
fn on_disk_is(repo: &Repository, workdir: &Path, path: &[u8], want: Entry, changed: &HashSet<&[u8]>) -> bool {
    let full = workdir.join(os_path(path));
    let meta = match std::fs::symlink_metadata(&full) {
        Ok(meta) => meta,
        Err(e) => {
            return want.is_none()
                && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
        }
    };
    let Some((id, mode)) = want else {
        return meta.is_dir() && folder_holds_only(workdir, &full, changed);
    };
    let Ok(blob) = repo.find_blob(id) else { return false };
    if mode == SYMLINK {
        meta.file_type().is_symlink()
            && std::fs::read_link(&full).is_ok_and(|to| to.as_os_str().as_bytes() == blob.content())
    } else {
        meta.is_file() && std::fs::read(&full).is_ok_and(|bytes| bytes == blob.content())
    }
}

/// Whether every file under `folder` is one of `changed` (which are each
/// checked on their own), so replacing the folder loses nothing.
fn folder_holds_only(workdir: &Path, folder: &Path, changed: &HashSet<&[u8]>) -> bool {
    let Ok(entries) = std::fs::read_dir(folder) else { return false };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { return false };
        if meta.is_dir() {
            if !folder_holds_only(workdir, &path, changed) {
                return false;
            }
        } else {
            let Ok(rel) = path.strip_prefix(workdir) else { return false };
            if !changed.contains(rel.as_os_str().as_bytes()) {
                return false;
            }
        }
    }
    true
}

/// Brings the `changed` paths of a checkout (files and index) to the tree
/// of `new`, whatever of old or new each holds now; [`blockers`] must have
/// found nothing. Only those paths are touched: HEAD already follows the
/// branch to `new`, so everything else already matches.
pub(super) fn follow(checkout: &Checkout, new: Oid, changed: &[Vec<u8>]) -> std::result::Result<(), git2::Error> {
    if changed.is_empty() {
        return Ok(()); // An empty path list would mean every path.
    }
    let repo = &checkout.repo;
    let tree = repo.find_commit(new)?.tree()?;
    let mut builder = git2::build::CheckoutBuilder::new();
    builder.force().disable_pathspec_match(true);
    for path in changed {
        builder.path(path.as_slice());
    }
    // Baseline is HEAD, which is already `new`: files still as in `old`
    // look modified to libgit2, so force rewrites them.
    repo.checkout_tree(tree.as_object(), Some(&mut builder))?;
    // Files that were already as in `new` (a checkout cut short by a
    // crash) were left alone, and so were their index entries: set those.
    index_to(repo, &tree, changed)
}

/// Brings the index entries of `paths` to the tree of `new`, leaving the
/// working files as they are: after a crash, for the files the person
/// changed meanwhile, so that their checkout shows their own changes
/// against the merged HEAD, not the merge undone.
pub(super) fn follow_index(checkout: &Checkout, new: Oid, paths: &[Vec<u8>]) -> std::result::Result<(), git2::Error> {
    let tree = checkout.repo.find_commit(new)?.tree()?;
    index_to(&checkout.repo, &tree, paths)
}

fn index_to(repo: &Repository, tree: &Tree<'_>, changed: &[Vec<u8>]) -> std::result::Result<(), git2::Error> {
    let mut index = repo.index()?;
    index.read(false)?;
    let mut touched = false;
    for path in changed {
        let rel = os_path(path);
        let conflicted = (1..=3).any(|stage| index.get_path(rel, stage).is_some());
        let have = index.get_path(rel, 0).map(|e| (e.id, e.mode));
        match entry_at(tree, path) {
            Some((id, mode)) if conflicted || have != Some((id, mode as u32)) => {
                if conflicted {
                    index.remove_path(rel)?;
                }
                index.add(&unstated_entry(path, id, mode as u32))?;
                touched = true;
            }
            None if conflicted || have.is_some() => {
                index.remove_path(rel)?;
                touched = true;
            }
            _ => {}
        }
    }
    if touched {
        index.write()?;
    }
    Ok(())
}

/// Whether the working file at `path` looks cut short by a crash while
/// the checkout wrote it: a file (not a link) whose bytes begin the blob
/// `new` has there, and stop short of its end. A file the person wrote is
/// not taken for one (it would have to be a strict beginning of the
/// merged version).
pub(super) fn cut_short(checkout: &Checkout, new: Oid, path: &[u8]) -> bool {
    let repo = &checkout.repo;
    let Ok(tree) = repo.find_commit(new).and_then(|c| c.tree()) else { return false };
    let Some((id, mode)) = entry_at(&tree, path) else { return false };
    let full = checkout.path.join(os_path(path));
    let is_file = std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_file());
    let (Ok(blob), true, false) = (repo.find_blob(id), is_file, mode == SYMLINK || mode == GITLINK) else {
        return false;
    };
    std::fs::read(&full).is_ok_and(|bytes| bytes.len() < blob.content().len() && blob.content().starts_with(&bytes))
}

/// An index entry without file stat data: git compares the content the
/// next time it looks, and refreshes the entry.
fn unstated_entry(path: &[u8], id: Oid, mode: u32) -> git2::IndexEntry {
    let zero = git2::IndexTime::new(0, 0);
    git2::IndexEntry {
        ctime: zero,
        mtime: zero,
        dev: 0,
        ino: 0,
        mode,
        uid: 0,
        gid: 0,
        file_size: 0,
        id,
        flags: 0,
        flags_extended: 0,
        path: path.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_compare_and_swap_refuses_a_moved_ref() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo.find_tree(repo.index().unwrap().write_tree().unwrap()).unwrap();
        let first = repo.commit(Some("refs/heads/main"), &sig, &sig, "1", &tree, &[]).unwrap();
        let parent = repo.find_commit(first).unwrap();
        let second = repo.commit(None, &sig, &sig, "2", &tree, &[&parent]).unwrap();
        let third = repo.commit(None, &sig, &sig, "3", &tree, &[&parent]).unwrap();

        // Computed on `first`, but someone moved main to `third` meanwhile.
        repo.reference("refs/heads/main", third, true, "someone").unwrap();
        let err = compare_and_swap(&repo, dir.path(), "refs/heads/main", first, second, "m").unwrap_err();
        assert!(
            matches!(err, MergeError::TargetMoved { expected, found: Some(found), .. } if expected == first && found == third),
            "{err:?}"
        );
        assert_eq!(current_target(&repo, "refs/heads/main"), Some(third), "overwritten");

        compare_and_swap(&repo, dir.path(), "refs/heads/main", third, second, "m").unwrap();
        assert_eq!(current_target(&repo, "refs/heads/main"), Some(second));
    }
}
