//! Merge back: an agent's branch onto the target branch (the engine).
//!
//! This module owns the strategies and every move of a target branch:
//! committing what an agent left uncommitted ([`commit_leftovers`]),
//! computing a merge ([`prepare_merge`]), applying it ([`apply_merge`]),
//! finishing one a crash cut short ([`recover`]), and what is asked of a
//! branch afterwards ([`is_merged`], [`unmerged_commits`], [`diff`]). The
//! person's checkouts of the target are [`checkout`](super::checkout)'s
//! (finding them, the dirty checks, bringing them to the new tree); the
//! gate before a merge is [`crate::sys::gate`]'s. Together they guarantee
//! two things:
//!
//! - **Merges never lose a commit.** A merge is computed in memory (merged
//!   index, tree and new commits written to the object store, no ref
//!   touched); the target ref then moves with a compare-and-swap from the
//!   id the merge was computed on to the new one. A conflict, a refusal or
//!   a target that moved meanwhile changes no ref at all, and the agent's
//!   branch is never moved or deleted here. A crash leaves the target
//!   either before or after a merge, never in between; see [`recover`].
//! - **The person's checkout is never left inconsistent.** Every worktree
//!   (the main one and linked ones) that has the target branch checked out
//!   is looked at first. If one has uncommitted changes, or an untracked or
//!   ignored file sits where the merge would write, nothing is changed and
//!   the outcome is [`MergeOutcome::TargetDirty`]. If it is clean, after the
//!   ref moves its files and index are brought to the new tree, exactly as
//!   after `git merge`: `git status` is clean and HEAD follows the branch.
//!   Just before and just after the ref moves, the paths the merge writes
//!   are looked at again: a change the person made there meanwhile stops
//!   the merge (the ref goes back); a change elsewhere is left as it is,
//!   as `git merge` leaves it.
//!
//! Decisions, in git's words:
//!
//! - [`Strategy::Merge`] fast-forwards when it can, as `git merge` does by
//!   default, and otherwise makes a merge commit whose parents are the
//!   target and the branch, in that order.
//! - [`Strategy::Rebase`] replays, oldest first, every non-merge commit of
//!   the branch that the target lacks (git's default without
//!   `--rebase-merges`): authors and messages are kept, the committer is
//!   corral, and commits whose changes the target already has are dropped.
//!   When the target is an ancestor of a branch without merge commits, it
//!   fast-forwards and keeps the branch's commits as they are. When the
//!   branch holds merge commits, the replayed result must equal the
//!   three-way merge of target and branch, or the rebase is refused
//!   ([`MergeOutcome::RebaseRefused`]): a merge commit can carry changes of
//!   its own (a conflict resolution) that replaying would silently drop.
//! - [`Strategy::Squash`] makes one commit on top of the target holding the
//!   three-way merge of target and branch.
//! - After a rebase or a squash the branch's own commits are not reachable
//!   from the target: [`is_merged`] says false and [`unmerged_commits`]
//!   counts them. `corral gc` keeps such branches unless forced; only the
//!   daemon, which saw the merge happen, knows their changes went in.
//!
//! The daemon runs one merge at a time: [`prepare_merge`], then journal
//! `merge_started` with the plan's `old` and `new`, then [`apply_merge`],
//! then journal the outcome. [`merge_branch`] does the two steps at once.
//!
//! git2's `Repository` is `Send` but not `Sync`: every function opens its
//! own, and callers run these on blocking threads.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use git2::{Oid, Repository, RepositoryState};
use serde::{Deserialize, Serialize};

use super::checkout::{blockers, changed_checkout, changed_paths, checkouts, compare_and_swap, dirty_checkout, follow};

/// How a branch goes onto its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Move the target only when it is an ancestor of the branch.
    FfOnly,
    /// Fast-forward when possible, else a merge commit (git's default).
    #[default]
    Merge,
    /// Replay the branch's commits on the target, then fast-forward.
    Rebase,
    /// One new commit on the target with the branch's combined changes.
    Squash,
}

impl Strategy {
    /// The name in configuration and on the command line: `ff-only`,
    /// `merge`, `rebase`, `squash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::FfOnly => "ff-only",
            Strategy::Merge => "merge",
            Strategy::Rebase => "rebase",
            Strategy::Squash => "squash",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "ff-only" => Ok(Strategy::FfOnly),
            "merge" => Ok(Strategy::Merge),
            "rebase" => Ok(Strategy::Rebase),
            "squash" => Ok(Strategy::Squash),
            _ => Err(format!("unknown merge strategy {s:?}: use ff-only, merge, rebase or squash")),
        }
    }
}

/// What a merge did, or why it did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The target moved from `old` to `new`. `commits` is how many of the
    /// branch's commits the old target lacked (for a squash, how many the
    /// one new commit combines).
    Merged { old: Oid, new: Oid, commits: usize },
    /// The target already has everything the branch has. Nothing changed.
    UpToDate,
    /// The branch and the target change the same lines. Nothing changed
    /// anywhere; `files` are the conflicting paths, sorted.
    Conflict { files: Vec<String> },
    /// Fast-forward only, and the target is not an ancestor of the branch.
    /// Nothing changed.
    NotFastForward,
    /// A rebase would drop changes that the branch's merge commits (listed)
    /// carry of their own. Nothing changed; use the merge strategy.
    RebaseRefused { merges: Vec<Oid> },
    /// The target is checked out in `worktree` with uncommitted changes, or
    /// with untracked or ignored files where the merge would write. Nothing
    /// changed. `files` are those paths, sorted; a repository operation in
    /// progress there (a merge, a rebase) shows as a note in parentheses.
    TargetDirty { worktree: PathBuf, files: Vec<String> },
}

/// A merge computed in memory: the commits exist in the object store, no
/// ref has moved. [`apply_merge`] moves the target from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    /// The target's full ref name (`refs/heads/main`).
    pub target: String,
    /// The branch's full ref name.
    pub branch: String,
    /// The branch's tip the merge was computed from.
    pub branch_tip: Oid,
    pub strategy: Strategy,
    /// Where the target was when the merge was computed.
    pub old: Oid,
    /// Where the target goes.
    pub new: Oid,
    /// See [`MergeOutcome::Merged`].
    pub commits: usize,
}

/// What [`prepare_merge`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The target must move: journal the plan, then [`apply_merge`] it.
    Ready(MergePlan),
    /// Nothing to move (up to date, conflict, refused, dirty checkout).
    Finished(MergeOutcome),
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The target is at `old`: the merge never happened; redo it.
    NotApplied,
    /// The target is at `new` and every checkout of it now matches.
    Applied,
    /// The target is at `new`, but the checkout in `worktree` has changes
    /// of its own in `files`, which the merge also changes: they were left
    /// alone, and the person has to reconcile them (`git status` shows).
    CheckoutBlocked { worktree: PathBuf, files: Vec<String> },
    /// The target is neither at `old` nor at `new` (someone moved it, or
    /// deleted it): nothing was done.
    Moved { current: Option<Oid> },
}

/// What went wrong, with the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("cannot {op} in {}: {}", path.display(), source.message())]
    Git { op: String, path: PathBuf, source: git2::Error },
    #[error("there is no branch {name} in {}", repo.display())]
    NoBranch { repo: PathBuf, name: String },
    #[error(
        "the target {target} moved from {expected} to {} since the merge was computed; \
         nothing was overwritten: compute the merge again",
        found.map_or_else(|| "nowhere (it was deleted)".to_string(), |id| id.to_string())
    )]
    TargetMoved { target: String, expected: Oid, found: Option<Oid> },
    #[error("{} is not on a branch (its HEAD is detached): its changes were left uncommitted", worktree.display())]
    Detached { worktree: PathBuf },
    #[error("a {state} is in progress in {}: finish or abort it first", worktree.display())]
    InProgress { worktree: PathBuf, state: String },
    #[error("{} is not the agent's own checkout of {branch} ({why}): its changes were left uncommitted", worktree.display())]
    NotItsBranch { worktree: PathBuf, branch: String, why: String },
    #[error(
        "the target {target} moved to the merge, but the checkout {} could not follow: {message}; \
         call recover to finish it",
        worktree.display()
    )]
    CheckoutFailed { target: String, worktree: PathBuf, message: String },
}

impl From<MergeError> for crate::model::error::Error {
    fn from(err: MergeError) -> crate::model::error::Error {
        let kind = match err {
            MergeError::Detached { .. } | MergeError::InProgress { .. } | MergeError::NotItsBranch { .. } => {
                crate::model::error::ErrorKind::Refused
            }
            _ => crate::model::error::ErrorKind::Other,
        };
        crate::model::error::Error::new(kind, err.to_string())
    }
}

pub(super) type Result<T, E = MergeError> = std::result::Result<T, E>;

pub(super) trait Context<T> {
    fn ctx(self, op: &str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, git2::Error> {
    fn ctx(self, op: &str, path: &Path) -> Result<T> {
        self.map_err(|source| MergeError::Git { op: op.to_string(), path: path.to_path_buf(), source })
    }
}

pub(super) fn open(path: &Path) -> Result<Repository> {
    Repository::open(path).ctx("open the repository", path)
}

/// A repository opened once and kept for many merges, so what libgit2
/// caches (the index, trees, the configuration) is not read again for
/// each: it reads again whatever changed on disk.
pub struct Opened {
    path: PathBuf,
    repo: Repository,
}

impl Opened {
    pub fn open(path: &Path) -> Result<Opened> {
        Ok(Opened { path: path.to_path_buf(), repo: open(path)? })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `main` is `refs/heads/main`; a name starting with `refs/` is kept.
pub(super) fn full_ref(name: &str) -> String {
    if name.starts_with("refs/") {
        name.to_string()
    } else {
        format!("refs/heads/{name}")
    }
}

fn ref_target(repo: &Repository, path: &Path, full: &str) -> Result<Oid> {
    let reference = match repo.find_reference(full) {
        Ok(r) => r,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(MergeError::NoBranch { repo: path.to_path_buf(), name: full.to_string() })
        }
        Err(e) => return Err(e).ctx(&format!("read {full}"), path),
    };
    reference.resolve().and_then(|r| r.peel_to_commit()).map(|c| c.id()).ctx(&format!("resolve {full}"), path)
}

pub(super) fn current_target(repo: &Repository, full: &str) -> Option<Oid> {
    repo.find_reference(full).ok()?.resolve().ok()?.target()
}

pub(super) fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

pub(super) fn os_path(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

/// Commits whatever the agent left uncommitted in `worktree` (tracked
/// changes, deletions, and untracked files that are not ignored) on the
/// branch checked out there, as `author` (name, email), with `message`
/// (the caller names the agent and its task). `None` when there was
/// nothing to commit. Refuses a detached HEAD or an operation in progress
/// (a merge, a rebase), leaving everything as it was.
///
/// The commit goes on `branch` (the agent's, `corral/root/...`) and
/// nowhere else: the worktree's HEAD and `.git` are the agent's to
/// rewrite, so a checkout that is not a linked worktree, or a HEAD that
/// comes to another branch (named so, or through the branch made a
/// symbolic ref to `main`), is refused before its index is touched.
pub fn commit_leftovers(worktree: &Path, branch: &str, author: (&str, &str), message: &str) -> Result<Option<Oid>> {
    let repo = open(worktree)?;
    if repo.state() != RepositoryState::Clean {
        return Err(MergeError::InProgress { worktree: worktree.to_path_buf(), state: state_name(repo.state()) });
    }
    let full = format!("refs/heads/{branch}");
    let not_its =
        |why: String| MergeError::NotItsBranch { worktree: worktree.to_path_buf(), branch: branch.into(), why };
    let parent = match repo.head() {
        Ok(head) if !head.is_branch() => return Err(MergeError::Detached { worktree: worktree.to_path_buf() }),
        Ok(head) if head.name() != Some(full.as_str()) => {
            return Err(not_its(format!("its HEAD is {}", head.name().unwrap_or("not a ref"))))
        }
        Ok(head) => Some(head.peel_to_commit().ctx("read HEAD", worktree)?),
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => None,
        Err(e) => return Err(e).ctx("read HEAD", worktree),
    };
    if !repo.is_worktree() {
        return Err(not_its("its .git names the main repository, not a linked worktree".into()));
    }
    let mut options = git2::StatusOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false).exclude_submodules(true);
    if repo.statuses(Some(&mut options)).ctx("read the status", worktree)?.is_empty() {
        return Ok(None);
    }
    let mut index = repo.index().ctx("read the index", worktree)?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).ctx("stage the changes", worktree)?;
    index.update_all(["*"], None).ctx("stage the deletions", worktree)?;
    index.write().ctx("write the index", worktree)?;
    let tree_id = index.write_tree().ctx("write the tree", worktree)?;
    if parent.as_ref().is_some_and(|p| p.tree_id() == tree_id) {
        return Ok(None);
    }
    let tree = repo.find_tree(tree_id).ctx("read the tree", worktree)?;
    let signature = git2::Signature::now(author.0, author.1).ctx("make the signature", worktree)?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let message = tidy(message);
    let id = repo.commit(Some(&full), &signature, &signature, &message, &tree, &parents).ctx("commit", worktree)?;
    Ok(Some(id))
}

/// A message as `git commit` would store it: trailing spaces and blank
/// lines gone, one final newline (comment lines are kept).
fn tidy(message: &str) -> String {
    git2::message_prettify(message, None).unwrap_or_else(|_| format!("{}\n", message.trim_end()))
}

pub(super) fn state_name(state: RepositoryState) -> String {
    match state {
        RepositoryState::Clean => "nothing",
        RepositoryState::Merge => "merge",
        RepositoryState::Revert | RepositoryState::RevertSequence => "revert",
        RepositoryState::CherryPick | RepositoryState::CherryPickSequence => "cherry-pick",
        RepositoryState::Bisect => "bisect",
        RepositoryState::Rebase | RepositoryState::RebaseInteractive | RepositoryState::RebaseMerge => "rebase",
        RepositoryState::ApplyMailbox | RepositoryState::ApplyMailboxOrRebase => "git am",
    }
    .to_string()
}

/// Computes the merge of `branch` into `target` in memory and writes the
/// commits it needs, without moving any ref, then looks in the checkouts
/// of `target` at what the merge would write (the rest of each checkout is
/// [`checkout_changes`]'s). `branch` and `target` are branch names (`main`) or full
/// ref names. `message` is the merge or squash commit's message (rebased
/// commits keep their own); `signature` is the committer (and the author
/// of merge and squash commits).
pub fn prepare_merge(
    opened: &Opened,
    branch: &str,
    target: &str,
    strategy: Strategy,
    message: &str,
    signature: &git2::Signature<'_>,
) -> Result<Prepared> {
    let (repo, repo_path) = (&opened.repo, opened.path.as_path());
    let (branch, target) = (full_ref(branch), full_ref(target));
    let old = ref_target(repo, repo_path, &target)?;
    let tip = ref_target(repo, repo_path, &branch)?;
    let p = repo_path;
    // One walk for the branch's commits the target lacks and the target's
    // the branch lacks. Either count being zero is a decision that could
    // lose work if wrong, so it is asked again directly before it is taken.
    let (commits, behind) = repo.graph_ahead_behind(tip, old).ctx("walk the history", p)?;
    let walk = |a, b| repo.graph_descendant_of(a, b).ctx("walk the history", p);
    if tip == old || (commits == 0 && walk(old, tip)?) {
        return Ok(Prepared::Finished(MergeOutcome::UpToDate));
    }
    let fast_forward = behind == 0 && walk(tip, old)?;
    let old_commit = repo.find_commit(old).ctx("read the target", p)?;
    let tip_commit = repo.find_commit(tip).ctx("read the branch", p)?;
    let computed: std::result::Result<Oid, MergeOutcome> = match strategy {
        Strategy::FfOnly if fast_forward => Ok(tip),
        Strategy::FfOnly => Err(MergeOutcome::NotFastForward),
        Strategy::Merge if fast_forward => Ok(tip),
        Strategy::Merge => match merged_tree(repo, p, &old_commit, &tip_commit)? {
            Err(files) => Err(MergeOutcome::Conflict { files }),
            Ok(tree) => {
                Ok(commit_tree(repo, p, signature, signature, &tidy(message), tree, &[&old_commit, &tip_commit])?)
            }
        },
        Strategy::Squash => match merged_tree(repo, p, &old_commit, &tip_commit)? {
            Err(files) => Err(MergeOutcome::Conflict { files }),
            Ok(tree) if tree == old_commit.tree_id() => Err(MergeOutcome::UpToDate),
            Ok(tree) => Ok(commit_tree(repo, p, signature, signature, &tidy(message), tree, &[&old_commit])?),
        },
        Strategy::Rebase => rebase(repo, p, &old_commit, &tip_commit, fast_forward, signature)?,
    };
    let new = match computed {
        Ok(new) => new,
        Err(outcome) => return Ok(Prepared::Finished(outcome)),
    };
    let plan = MergePlan { target, branch, branch_tip: tip, strategy, old, new, commits };
    let checkouts = checkouts(repo, p, &plan.target)?;
    let changed = if checkouts.is_empty() { Vec::new() } else { changed_paths(repo, p, old, new)? };
    if let Some(dirty) = dirty_checkout(&checkouts, &plan.target, old, new, &changed)? {
        return Ok(Prepared::Finished(dirty));
    }
    Ok(Prepared::Ready(plan))
}

/// `TargetDirty` for the first checkout of `target` (main or linked) in
/// which the person has changed a tracked file, staged something, left a
/// conflict or has an operation under way: a merge waits for it to be
/// clean. It reads only the checkouts, so it may run beside
/// [`commit_leftovers`] and [`prepare_merge`]; [`with_changes`] puts the
/// two answers together.
pub fn checkout_changes(opened: &Opened, target: &str) -> Result<Option<MergeOutcome>> {
    changed_checkout(&opened.repo, &opened.path, &full_ref(target))
}

/// What [`prepare_merge`] found, given what [`checkout_changes`] found: a
/// merge that is ready waits for a checkout with changes; one that waits
/// already lists those changes too (for the same checkout). A conflict, a
/// refusal or nothing to merge stays as it is.
pub fn with_changes(prepared: Prepared, changes: Option<MergeOutcome>) -> Prepared {
    match (prepared, changes) {
        (Prepared::Ready(_), Some(changes)) => Prepared::Finished(changes),
        (
            Prepared::Finished(MergeOutcome::TargetDirty { worktree, mut files }),
            Some(MergeOutcome::TargetDirty { worktree: same, files: more }),
        ) if same == worktree => {
            files.extend(more);
            files.sort();
            files.dedup();
            Prepared::Finished(MergeOutcome::TargetDirty { worktree, files })
        }
        (prepared, _) => prepared,
    }
}

/// The three-way merge of two commits as a tree in the object store, or
/// the conflicting paths.
fn merged_tree(
    repo: &Repository,
    p: &Path,
    ours: &git2::Commit<'_>,
    theirs: &git2::Commit<'_>,
) -> Result<std::result::Result<Oid, Vec<String>>> {
    // Most agents' branches and the target change different files: then
    // the merge is decided tree by tree, reading only the folders both
    // sides changed. One merge base, or libgit2 decides (as it does
    // wherever a file's content would be merged).
    if let Ok(bases) = repo.merge_bases(ours.id(), theirs.id()) {
        if let [base] = bases.iter().as_slice() {
            let base = repo.find_commit(*base).ctx("read the merge base", p)?;
            let (base, ours, theirs) = (base.tree_id(), ours.tree_id(), theirs.tree_id());
            if let Some(merged) = tree_level_merge(repo, Some(base), ours, theirs).ctx("merge", p)? {
                return Ok(Ok(merged.unwrap_or(empty_tree(repo).ctx("write the merged tree", p)?)));
            }
        }
    }
    let mut index = repo.merge_commits(ours, theirs, None).ctx("merge", p)?;
    if index.has_conflicts() {
        return Ok(Err(conflict_files(&index, p)?));
    }
    Ok(Ok(index.write_tree_to(repo).ctx("write the merged tree", p)?))
}

const TREE: i32 = 0o040000;

type TreeItem = (Oid, i32);

/// The merge of the trees `ours` and `theirs` from `base`, where no path
/// needs more than a choice: an entry one side left as in `base` takes the
/// other side's, an entry both sides made the same is kept, and a folder
/// both sides changed is merged entry by entry the same way. `Ok(None)`
/// when some path changed on both sides in different ways (a content
/// merge, a conflict, or a rename for the full merge to find).
/// `Ok(Some(None))` is a merged tree that is empty (git keeps no empty
/// folder). What it gives is what git's and libgit2's merges give there.
fn tree_level_merge(
    repo: &Repository,
    base: Option<Oid>,
    ours: Oid,
    theirs: Oid,
) -> std::result::Result<Option<Option<Oid>>, git2::Error> {
    if ours == theirs || base == Some(theirs) {
        return Ok(Some(Some(ours)));
    }
    if base == Some(ours) {
        return Ok(Some(Some(theirs)));
    }
    let entries = |id: Option<Oid>| -> std::result::Result<std::collections::BTreeMap<Vec<u8>, TreeItem>, git2::Error> {
        let Some(id) = id else { return Ok(Default::default()) };
        let tree = repo.find_tree(id)?;
        Ok(tree.iter().map(|e| (e.name_bytes().to_vec(), (e.id(), e.filemode()))).collect())
    };
    let (base, ours_entries, theirs_entries) = (entries(base)?, entries(Some(ours))?, entries(Some(theirs))?);
    let names: BTreeSet<&Vec<u8>> = base.keys().chain(ours_entries.keys()).chain(theirs_entries.keys()).collect();
    let mut builder = repo.treebuilder(Some(&repo.find_tree(ours)?))?;
    for name in names {
        let (b, o, t) = (base.get(name).copied(), ours_entries.get(name).copied(), theirs_entries.get(name).copied());
        let merged = if o == t || b == t {
            o
        } else if b == o {
            t
        } else if let (Some((o_id, TREE)), Some((t_id, TREE))) = (o, t) {
            let b_id = b.filter(|(_, mode)| *mode == TREE).map(|(id, _)| id);
            match tree_level_merge(repo, b_id, o_id, t_id)? {
                None => return Ok(None),
                Some(merged) => merged.map(|id| (id, TREE)),
            }
        } else {
            return Ok(None);
        };
        if merged != o {
            let name = OsStr::from_bytes(name);
            match merged {
                Some((id, mode)) => {
                    builder.insert(name, id, mode)?;
                }
                None => builder.remove(name)?,
            }
        }
    }
    if builder.is_empty() {
        return Ok(Some(None));
    }
    Ok(Some(Some(builder.write()?)))
}

fn empty_tree(repo: &Repository) -> std::result::Result<Oid, git2::Error> {
    repo.treebuilder(None)?.write()
}

fn conflict_files(index: &git2::Index, p: &Path) -> Result<Vec<String>> {
    let mut files = BTreeSet::new();
    for conflict in index.conflicts().ctx("read the conflicts", p)? {
        let conflict = conflict.ctx("read a conflict", p)?;
        for entry in [conflict.ancestor, conflict.our, conflict.their].into_iter().flatten() {
            files.insert(lossy(&entry.path));
        }
    }
    Ok(files.into_iter().collect())
}

fn commit_tree(
    repo: &Repository,
    p: &Path,
    author: &git2::Signature<'_>,
    committer: &git2::Signature<'_>,
    message: &str,
    tree: Oid,
    parents: &[&git2::Commit<'_>],
) -> Result<Oid> {
    let tree = repo.find_tree(tree).ctx("read a tree", p)?;
    repo.commit(None, author, committer, message, &tree, parents).ctx("write a commit", p)
}

/// Replays the branch's commits onto `onto` (see the module's notes).
fn rebase(
    repo: &Repository,
    p: &Path,
    onto: &git2::Commit<'_>,
    tip: &git2::Commit<'_>,
    fast_forward: bool,
    committer: &git2::Signature<'_>,
) -> Result<std::result::Result<Oid, MergeOutcome>> {
    let mut walk = repo.revwalk().ctx("walk the history", p)?;
    walk.push(tip.id()).ctx("walk the history", p)?;
    walk.hide(onto.id()).ctx("walk the history", p)?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE).ctx("walk the history", p)?;
    let mut picks = Vec::new();
    let mut merges = Vec::new();
    for id in walk {
        let commit = repo.find_commit(id.ctx("walk the history", p)?).ctx("read a commit", p)?;
        if commit.parent_count() > 1 {
            merges.push(commit.id());
        } else {
            picks.push(commit);
        }
    }
    if fast_forward && merges.is_empty() {
        return Ok(Ok(tip.id()));
    }
    let mut head = onto.clone();
    for commit in &picks {
        let was_empty = commit.parent(0).is_ok_and(|parent| parent.tree_id() == commit.tree_id());
        let mut index = repo.cherrypick_commit(commit, &head, 0, None).ctx("replay a commit", p)?;
        if index.has_conflicts() {
            return Ok(Err(MergeOutcome::Conflict { files: conflict_files(&index, p)? }));
        }
        let tree = index.write_tree_to(repo).ctx("write a replayed tree", p)?;
        if tree == head.tree_id() && !was_empty {
            continue; // The target already has this change.
        }
        let message = String::from_utf8_lossy(commit.message_raw_bytes());
        let id = commit_tree(repo, p, &commit.author(), committer, &message, tree, &[&head])?;
        head = repo.find_commit(id).ctx("read a commit", p)?;
    }
    if head.id() == onto.id() {
        return Ok(Err(MergeOutcome::UpToDate));
    }
    if !merges.is_empty() {
        match merged_tree(repo, p, onto, tip)? {
            Ok(tree) if tree == head.tree_id() => {}
            _ => return Ok(Err(MergeOutcome::RebaseRefused { merges })),
        }
    }
    Ok(Ok(head.id()))
}

/// Moves the target from `plan.old` to `plan.new` (compare-and-swap) and
/// brings its clean checkouts along. Looks again first at what the move
/// writes: the person may have started editing since [`prepare_merge`]
/// (a file they changed elsewhere meanwhile is left as it is).
///
/// `Err(TargetMoved)` when the target is no longer at `plan.old`: nothing
/// was overwritten; prepare again. `Err(CheckoutFailed)` when the ref
/// moved but a checkout could not be written (a full disk): the merge is
/// in, and [`recover`] finishes the checkout.
pub fn apply_merge(opened: &Opened, plan: &MergePlan) -> Result<MergeOutcome> {
    let (repo, p) = (&opened.repo, opened.path.as_path());
    let current = current_target(repo, &plan.target);
    if current != Some(plan.old) {
        return Err(MergeError::TargetMoved { target: plan.target.clone(), expected: plan.old, found: current });
    }
    // The whole checkout was clean when prepared; what matters now is only
    // what the move would overwrite.
    let changed = changed_paths(repo, p, plan.old, plan.new)?;
    if let Some(dirty) = dirty_checkout(&checkouts(repo, p, &plan.target)?, &plan.target, plan.old, plan.new, &changed)?
    {
        return Ok(dirty);
    }
    let reflog = format!("corral: {} {} into {}", plan.strategy, plan.branch, plan.target);
    compare_and_swap(repo, p, &plan.target, plan.old, plan.new, &reflog)?;

    let checkouts = checkouts(repo, p, &plan.target)?;
    // Between the look above and the ref move the person may have saved a
    // file the merge writes: look again at just those paths, and if so put
    // the target back, so their checkout and the ref agree again.
    for checkout in checkouts.iter().filter(|c| !c.rebasing) {
        let blocked = blockers(checkout, plan.old, plan.new, &changed)?;
        if !blocked.is_empty() {
            let undo = format!("corral: undo {reflog}: {} changed meanwhile", checkout.path.display());
            if let Err(err) = compare_and_swap(repo, p, &plan.target, plan.new, plan.old, &undo) {
                return Err(MergeError::CheckoutFailed {
                    target: plan.target.clone(),
                    worktree: checkout.path.clone(),
                    message: format!(
                        "{} changed meanwhile and the merge could not be undone: {err}",
                        blocked.join(", ")
                    ),
                });
            }
            return Ok(MergeOutcome::TargetDirty { worktree: checkout.path.clone(), files: blocked });
        }
    }
    for checkout in checkouts.iter().filter(|c| !c.rebasing) {
        follow(checkout, plan.new, &changed).map_err(|e| MergeError::CheckoutFailed {
            target: plan.target.clone(),
            worktree: checkout.path.clone(),
            message: e.message().to_string(),
        })?;
    }
    Ok(MergeOutcome::Merged { old: plan.old, new: plan.new, commits: plan.commits })
}

/// [`prepare_merge`] then [`apply_merge`], for callers that journal
/// nothing in between (tests, `corral merge` run by hand).
pub fn merge_branch(
    repo: &Path,
    branch: &str,
    target: &str,
    strategy: Strategy,
    message: &str,
    signature: &git2::Signature<'_>,
) -> Result<MergeOutcome> {
    let opened = Opened::open(repo)?;
    let prepared = prepare_merge(&opened, branch, target, strategy, message, signature)?;
    match with_changes(prepared, checkout_changes(&opened, target)?) {
        Prepared::Ready(plan) => apply_merge(&opened, &plan),
        Prepared::Finished(outcome) => Ok(outcome),
    }
}

/// Finishes or rules out a merge that a crash interrupted. Call it on
/// start for every merge the journal shows started (`merge_started` with
/// `old` and `new`, written before [`apply_merge`]) but not ended.
///
/// Target at `expected_old`: the ref never moved; redo the merge (prepare
/// again, the target may have changed). At `expected_new`: the ref moved;
/// every checkout of the target is brought to the new tree, as
/// [`apply_merge`] would have, unless the person changed a file the merge
/// writes meanwhile ([`Recovery::CheckoutBlocked`]). Anywhere else: it is
/// left alone ([`Recovery::Moved`]). Safe to call more than once.
pub fn recover(repo_path: &Path, target: &str, expected_old: Oid, expected_new: Oid) -> Result<Recovery> {
    let repo = open(repo_path)?;
    let target = full_ref(target);
    let current = current_target(&repo, &target);
    if current == Some(expected_old) {
        return Ok(Recovery::NotApplied);
    }
    if current != Some(expected_new) {
        return Ok(Recovery::Moved { current });
    }
    let changed = changed_paths(&repo, repo_path, expected_old, expected_new)?;
    let checkouts = checkouts(&repo, repo_path, &target)?;
    for checkout in checkouts.iter().filter(|c| !c.rebasing) {
        let blocked = blockers(checkout, expected_old, expected_new, &changed)?;
        if !blocked.is_empty() {
            return Ok(Recovery::CheckoutBlocked { worktree: checkout.path.clone(), files: blocked });
        }
    }
    for checkout in checkouts.iter().filter(|c| !c.rebasing) {
        follow(checkout, expected_new, &changed).map_err(|e| MergeError::CheckoutFailed {
            target: target.clone(),
            worktree: checkout.path.clone(),
            message: e.message().to_string(),
        })?;
    }
    Ok(Recovery::Applied)
}

/// What [`recover_rescuing`] did, besides its [`Recovery`].
#[derive(Debug, Default)]
pub struct Rescue {
    /// Copies of the files a crash left cut short, made before the
    /// checkout was finished over them.
    pub rescued: Vec<PathBuf>,
    /// Files the person changed in the checkout after the crash: left as
    /// they were (their index entries follow the merge).
    pub kept: Vec<String>,
}

/// [`recover`], for a daemon that died while writing a checkout, where
/// `recover` finds files in the way. Two kinds: a file the checkout was
/// writing can be cut short (its bytes a strict beginning of the merged
/// version): it is copied under `rescue_dir` (its path kept) and brought
/// to the merged version like the rest. Any other is the person's (a file
/// changed, or made, between the crash and this restart): it is left
/// exactly as it is, and named in [`Rescue::kept`]. The checkout ends as
/// after the merge, but for the person's files. Safe to call more than
/// once.
pub fn recover_rescuing(
    repo_path: &Path,
    target: &str,
    expected_old: Oid,
    expected_new: Oid,
    rescue_dir: &Path,
) -> Result<(Recovery, Rescue)> {
    let first = recover(repo_path, target, expected_old, expected_new)?;
    if !matches!(first, Recovery::CheckoutBlocked { .. }) {
        return Ok((first, Rescue::default()));
    }
    let repo = open(repo_path)?;
    let full = full_ref(target);
    let changed = changed_paths(&repo, repo_path, expected_old, expected_new)?;
    let failed = |worktree: &Path, message: String| MergeError::CheckoutFailed {
        target: full.clone(),
        worktree: worktree.to_path_buf(),
        message,
    };
    let mut rescue = Rescue::default();
    for checkout in checkouts(&repo, repo_path, &full)?.iter().filter(|c| !c.rebasing) {
        let blocked: BTreeSet<String> = blockers(checkout, expected_old, expected_new, &changed)?.into_iter().collect();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for path in &changed {
            match blocked.contains(&String::from_utf8_lossy(path).into_owned()) {
                false => ours.push(path.clone()),
                true if super::checkout::cut_short(checkout, expected_new, path) => {
                    let (from, to) = (checkout.path.join(os_path(path)), rescue_dir.join(os_path(path)));
                    let copied =
                        to.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::copy(&from, &to));
                    copied.map_err(|e| {
                        failed(&checkout.path, format!("cannot keep a copy of {}: {e}", from.display()))
                    })?;
                    rescue.rescued.push(to);
                    ours.push(path.clone());
                }
                true => theirs.push(path.clone()),
            }
        }
        follow(checkout, expected_new, &ours).map_err(|e| failed(&checkout.path, e.message().to_string()))?;
        super::checkout::follow_index(checkout, expected_new, &theirs)
            .map_err(|e| failed(&checkout.path, e.message().to_string()))?;
        rescue.kept.extend(theirs.iter().map(|p| String::from_utf8_lossy(p).into_owned()));
    }
    Ok((Recovery::Applied, rescue))
}

/// True when the tip of `branch` is reachable from `target` (ancestor or
/// the same commit): deleting the branch loses no commit. False after a
/// rebase or squash merge, whose new commits are not the branch's.
pub fn is_merged(repo_path: &Path, branch: &str, target: &str) -> Result<bool> {
    Ok(unmerged_commits(repo_path, branch, target)? == 0)
}

/// How many commits of `branch` are not reachable from `target`: what
/// deleting the branch would lose. `corral gc` deletes a branch only at 0
/// (unless forced, and then it names them).
pub fn unmerged_commits(repo_path: &Path, branch: &str, target: &str) -> Result<usize> {
    let repo = open(repo_path)?;
    let tip = ref_target(&repo, repo_path, &full_ref(branch))?;
    let base = ref_target(&repo, repo_path, &full_ref(target))?;
    Ok(repo.graph_ahead_behind(tip, base).ctx("walk the history", repo_path)?.0)
}

/// What the branch changed since it left `base`, as a unified patch (like
/// `git diff base...branch`: from their merge base to the branch's tip, so
/// later changes on `base` do not show). Both are revisions (`main`,
/// `corral/root/api`, a commit id). Renames are detected.
pub fn diff(repo_path: &Path, branch: &str, base: &str) -> Result<String> {
    let repo = open(repo_path)?;
    let p = repo_path;
    let resolve = |rev: &str| -> Result<git2::Commit<'_>> {
        let object = repo.revparse_single(rev).map_err(|e| match e.code() {
            git2::ErrorCode::NotFound => MergeError::NoBranch { repo: p.to_path_buf(), name: rev.to_string() },
            _ => MergeError::Git { op: format!("resolve {rev}"), path: p.to_path_buf(), source: e },
        })?;
        object.peel_to_commit().ctx(&format!("resolve {rev} to a commit"), p)
    };
    let tip = resolve(branch)?;
    let base = resolve(base)?;
    let from = match repo.merge_base(tip.id(), base.id()) {
        Ok(id) => Some(repo.find_commit(id).and_then(|c| c.tree()).ctx("read the merge base", p)?),
        Err(e) if e.code() == git2::ErrorCode::NotFound => None,
        Err(e) => return Err(e).ctx("find the merge base", p),
    };
    let to = tip.tree().ctx("read the branch's tree", p)?;
    let mut diff = repo.diff_tree_to_tree(from.as_ref(), Some(&to), None).ctx("compare trees", p)?;
    diff.find_similar(None).ctx("find renames", p)?;
    let mut patch = Vec::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        if matches!(line.origin(), '+' | '-' | ' ') {
            patch.push(line.origin() as u8);
        }
        patch.extend_from_slice(line.content());
        true
    })
    .ctx("format the patch", p)?;
    Ok(String::from_utf8_lossy(&patch).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_strategy_names_round_trip() {
        for strategy in [Strategy::FfOnly, Strategy::Merge, Strategy::Rebase, Strategy::Squash] {
            assert_eq!(strategy.as_str().parse::<Strategy>(), Ok(strategy));
            assert_eq!(serde_json::to_string(&strategy).unwrap(), format!("\"{strategy}\""));
        }
        assert!("fast-forward".parse::<Strategy>().unwrap_err().contains("ff-only"));
    }

    /// A commit of `files` (path, content; `None` leaves the path out).
    fn commit_of(repo: &Repository, files: &[(&str, Option<&str>)], parents: &[Oid]) -> Oid {
        let mut index = git2::Index::new().unwrap();
        for (path, content) in files {
            if let Some(content) = content {
                let id = repo.blob(content.as_bytes()).unwrap();
                let mode = if path.ends_with(".sh") { 0o100755 } else { 0o100644 };
                let entry = git2::IndexEntry {
                    ctime: git2::IndexTime::new(0, 0),
                    mtime: git2::IndexTime::new(0, 0),
                    dev: 0,
                    ino: 0,
                    mode,
                    uid: 0,
                    gid: 0,
                    file_size: content.len() as u32,
                    id,
                    flags: 0,
                    flags_extended: 0,
                    path: path.as_bytes().to_vec(),
                };
                index.add(&entry).unwrap();
            }
        }
        let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let parents: Vec<git2::Commit<'_>> = parents.iter().map(|id| repo.find_commit(*id).unwrap()).collect();
        repo.commit(None, &sig, &sig, "c", &tree, &parents.iter().collect::<Vec<_>>()).unwrap()
    }

    /// Applies `changes` (path, new content or `None` for deleted) to `base`.
    fn changed<'a>(
        base: &[(&'a str, Option<&'a str>)],
        changes: &[(&'a str, Option<&'a str>)],
    ) -> Vec<(&'a str, Option<&'a str>)> {
        let mut files: std::collections::BTreeMap<&str, Option<&str>> = base.iter().copied().collect();
        files.extend(changes.iter().copied());
        files.into_iter().collect()
    }

    #[test]
    fn the_tree_level_merge_gives_what_libgit2s_merge_gives_or_leaves_it_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let base_files = [
            ("README", Some("readme\n")),
            ("a/one.txt", Some("one\n")),
            ("a/two.txt", Some("two\n")),
            ("a/deep/x.txt", Some("x\n")),
            ("b/three.txt", Some("three\n")),
            ("c/gone.txt", Some("gone\n")),
            ("c/also.txt", Some("also\n")),
            ("run.sh", Some("echo\n")),
        ];
        let base = commit_of(&repo, &base_files, &[]);
        // (ours' changes, theirs' changes, whether a choice per path does it)
        type Files<'a> = Vec<(&'a str, Option<&'a str>)>;
        let cases: Vec<(Files<'_>, Files<'_>, bool)> = vec![
            // Different files in different folders; a new folder each.
            (
                vec![("a/one.txt", Some("one, ours\n")), ("new/ours.txt", Some("o\n"))],
                vec![("b/three.txt", Some("3\n")), ("other/t.txt", Some("t\n"))],
                true,
            ),
            // Different files in the same folder, one deep.
            (
                vec![("a/one.txt", Some("1\n"))],
                vec![("a/deep/x.txt", Some("X\n")), ("a/deep/y.txt", Some("y\n"))],
                true,
            ),
            // One side deletes a folder, the other changes elsewhere.
            (vec![("c/gone.txt", None), ("c/also.txt", None)], vec![("README", Some("read me\n"))], true),
            // Each side deletes one file of a folder of two: the folder goes.
            (vec![("c/gone.txt", None)], vec![("c/also.txt", None)], true),
            // The same change on both sides.
            (
                vec![("b/three.txt", Some("same\n"))],
                vec![("b/three.txt", Some("same\n")), ("README", Some("r\n"))],
                true,
            ),
            // Both add the same new file.
            (vec![("d/new.txt", Some("n\n"))], vec![("d/new.txt", Some("n\n")), ("d/more.txt", Some("m\n"))], true),
            // A file that becomes a folder on one side only.
            (vec![("README", None), ("README/inside.txt", Some("i\n"))], vec![("a/two.txt", Some("2\n"))], true),
            // Both change one file differently: for the full merge.
            (vec![("a/one.txt", Some("one\nours\n"))], vec![("a/one.txt", Some("theirs\none\n"))], false),
            // One changes a file the other deletes: for the full merge.
            (vec![("b/three.txt", Some("3!\n"))], vec![("b/three.txt", None)], false),
            // A folder on one side, a file of that name on the other.
            (vec![("e/f.txt", Some("f\n"))], vec![("e", Some("e\n"))], false),
        ];
        for (i, (ours, theirs, by_choice)) in cases.into_iter().enumerate() {
            let ours = commit_of(&repo, &changed(&base_files, &ours), &[base]);
            let theirs = commit_of(&repo, &changed(&base_files, &theirs), &[base]);
            let (ours_c, theirs_c) = (repo.find_commit(ours).unwrap(), repo.find_commit(theirs).unwrap());
            let base_tree = repo.find_commit(base).unwrap().tree_id();
            let chosen = tree_level_merge(&repo, Some(base_tree), ours_c.tree_id(), theirs_c.tree_id()).unwrap();
            assert_eq!(chosen.is_some(), by_choice, "case {i}: decided by choice");
            let mut full = repo.merge_commits(&ours_c, &theirs_c, None).unwrap();
            if let Some(chosen) = chosen {
                assert!(!full.has_conflicts(), "case {i}: libgit2 has a conflict");
                let expected = full.write_tree_to(&repo).unwrap();
                assert_eq!(chosen.unwrap_or_else(|| empty_tree(&repo).unwrap()), expected, "case {i}: the same tree");
            }
            // And through the merge itself: the same tree either way.
            let merged = merged_tree(&repo, dir.path(), &ours_c, &theirs_c).unwrap();
            if !full.has_conflicts() {
                assert_eq!(merged, Ok(full.write_tree_to(&repo).unwrap()), "case {i}: merged_tree");
            } else {
                assert!(merged.is_err(), "case {i}: a conflict");
            }
        }
    }
}
