//! Merge back: an agent's branch onto the target branch, and the gate before.
//!
//! This module owns every change corral makes to a target branch and to the
//! person's checkout of it. It guarantees two things:
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

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use git2::{ObjectType, Oid, Repository, RepositoryState, Status, Tree};
use serde::{Deserialize, Serialize};

/// How a branch goes onto its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
            MergeError::Detached { .. } | MergeError::InProgress { .. } => crate::model::error::ErrorKind::Refused,
            _ => crate::model::error::ErrorKind::Other,
        };
        crate::model::error::Error::new(kind, err.to_string())
    }
}

type Result<T, E = MergeError> = std::result::Result<T, E>;

trait Context<T> {
    fn ctx(self, op: &str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, git2::Error> {
    fn ctx(self, op: &str, path: &Path) -> Result<T> {
        self.map_err(|source| MergeError::Git { op: op.to_string(), path: path.to_path_buf(), source })
    }
}

fn open(path: &Path) -> Result<Repository> {
    Repository::open(path).ctx("open the repository", path)
}

/// `main` is `refs/heads/main`; a name starting with `refs/` is kept.
fn full_ref(name: &str) -> String {
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

fn current_target(repo: &Repository, full: &str) -> Option<Oid> {
    repo.find_reference(full).ok()?.resolve().ok()?.target()
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn os_path(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

/// Commits whatever the agent left uncommitted in `worktree` (tracked
/// changes, deletions, and untracked files that are not ignored) on the
/// branch checked out there, as `author` (name, email), with `message`
/// (the caller names the agent and its task). `None` when there was
/// nothing to commit. Refuses a detached HEAD or an operation in progress
/// (a merge, a rebase), leaving everything as it was.
pub fn commit_leftovers(worktree: &Path, author: (&str, &str), message: &str) -> Result<Option<Oid>> {
    let repo = open(worktree)?;
    if repo.state() != RepositoryState::Clean {
        return Err(MergeError::InProgress { worktree: worktree.to_path_buf(), state: state_name(repo.state()) });
    }
    let parent = match repo.head() {
        Ok(head) if !head.is_branch() => return Err(MergeError::Detached { worktree: worktree.to_path_buf() }),
        Ok(head) => Some(head.peel_to_commit().ctx("read HEAD", worktree)?),
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => None,
        Err(e) => return Err(e).ctx("read HEAD", worktree),
    };
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
    let id = repo.commit(Some("HEAD"), &signature, &signature, &message, &tree, &parents).ctx("commit", worktree)?;
    Ok(Some(id))
}

/// A message as `git commit` would store it: trailing spaces and blank
/// lines gone, one final newline (comment lines are kept).
fn tidy(message: &str) -> String {
    git2::message_prettify(message, None).unwrap_or_else(|_| format!("{}\n", message.trim_end()))
}

fn state_name(state: RepositoryState) -> String {
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

/// A gate: the command that must pass before a branch merges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Run with `sh -c`.
    Shell(String),
    /// Run directly: the program and its arguments.
    Argv(Vec<String>),
}

/// How a gate ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    /// Exited 0 in time.
    pub passed: bool,
    /// The exit code; `None` when killed by a signal or never started.
    pub code: Option<i32>,
    /// It ran out of time and was killed.
    pub timed_out: bool,
    /// The last [`GATE_OUTPUT_MAX`] bytes of stdout and stderr, interleaved
    /// as written, with a first line saying how much was cut.
    pub output: String,
}

/// How much of a gate's output [`GateResult`] keeps.
pub const GATE_OUTPUT_MAX: usize = 16 * 1024;

/// The tail of a stream: the last `GATE_OUTPUT_MAX` bytes and how many
/// came before them.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: u64,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > GATE_OUTPUT_MAX {
            let extra = self.bytes.len() - GATE_OUTPUT_MAX;
            self.bytes.drain(..extra);
            self.cut += extra as u64;
        }
    }

    fn text(&self) -> String {
        let mut start = 0;
        if self.cut > 0 {
            // Do not start inside a UTF-8 sequence.
            while start < self.bytes.len() && start < 4 && (self.bytes[start] & 0xC0) == 0x80 {
                start += 1;
            }
        }
        let body = String::from_utf8_lossy(&self.bytes[start..]);
        if self.cut > 0 {
            format!("[corral: {} earlier bytes of output cut]\n{body}", self.cut + start as u64)
        } else {
            body.into_owned()
        }
    }
}

/// Runs `gate` in `worktree`, in its own process group, stdin from
/// /dev/null, stdout and stderr captured together. After `timeout` the
/// whole group is killed (SIGKILL). When the gate's main process ends,
/// whatever it left running in its group is killed too. Never fails: a
/// gate that cannot start did not pass, and says why in `output`.
pub fn run_gate(worktree: &Path, gate: &Gate, timeout: Duration) -> GateResult {
    let failed = |output: String| GateResult { passed: false, code: None, timed_out: false, output };
    let mut command = match gate {
        Gate::Shell(script) => {
            let mut command = Command::new("sh");
            command.arg("-c").arg(script);
            command
        }
        Gate::Argv(argv) => match argv.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
            None => return failed("corral: the gate command is empty".to_string()),
        },
    };
    // Close-on-exec, so agents spawned meanwhile do not inherit the write
    // end and keep the pipe open; the child gets it as its stdout/stderr.
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return failed(format!("corral: cannot make a pipe for the gate: {e}")),
    };
    let write_copy = match write_end.try_clone() {
        Ok(fd) => fd,
        Err(e) => return failed(format!("corral: cannot make a pipe for the gate: {e}")),
    };
    command
        .current_dir(worktree)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_copy))
        .process_group(0);
    let spawned = command.spawn();
    // The command holds our copies of the write end: drop it, or the
    // reader never sees the end of the output.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return failed(format!("corral: cannot start the gate {gate:?} in {}: {e}", worktree.display())),
    };
    let pid = child.id();

    let tail = Arc::new(Mutex::new(Tail::default()));
    let (read_done_tx, read_done) = mpsc::channel::<()>();
    {
        let tail = Arc::clone(&tail);
        let mut reader = std::fs::File::from(read_end);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => tail.lock().unwrap_or_else(|e| e.into_inner()).push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = read_done_tx.send(());
        });
    }
    // Wait for the exit without reaping (WNOWAIT): while the main process
    // is a zombie its pid, and so the group id, cannot be reused, and
    // killing the group cannot hit a stranger.
    let (exited_tx, exited) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let child = nix::unistd::Pid::from_raw(pid as i32);
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
        let _ = exited_tx.send(());
    });
    let timed_out = exited.recv_timeout(timeout).is_err();
    if timed_out {
        crate::sys::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = exited.recv();
    }
    crate::sys::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().ok();
    // A process that left the group (setsid) may hold the pipe open: wait
    // a little for the rest of the output, not for ever.
    let _ = read_done.recv_timeout(Duration::from_secs(2));
    let mut output = tail.lock().unwrap_or_else(|e| e.into_inner()).text();
    if timed_out {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&format!("[corral: the gate ran out of time after {timeout:?} and was killed]\n"));
    }
    let code = status.and_then(|s| s.code());
    GateResult { passed: !timed_out && code == Some(0), code, timed_out, output }
}

/// Computes the merge of `branch` into `target` in memory and writes the
/// commits it needs, without moving any ref, then looks at the checkouts
/// of `target`. `branch` and `target` are branch names (`main`) or full
/// ref names. `message` is the merge or squash commit's message (rebased
/// commits keep their own); `signature` is the committer (and the author
/// of merge and squash commits).
pub fn prepare_merge(
    repo_path: &Path,
    branch: &str,
    target: &str,
    strategy: Strategy,
    message: &str,
    signature: &git2::Signature<'_>,
) -> Result<Prepared> {
    let repo = open(repo_path)?;
    let (branch, target) = (full_ref(branch), full_ref(target));
    let old = ref_target(&repo, repo_path, &target)?;
    let tip = ref_target(&repo, repo_path, &branch)?;
    let p = repo_path;
    if tip == old || repo.graph_descendant_of(old, tip).ctx("walk the history", p)? {
        return Ok(Prepared::Finished(MergeOutcome::UpToDate));
    }
    let commits = repo.graph_ahead_behind(tip, old).ctx("walk the history", p)?.0;
    let fast_forward = repo.graph_descendant_of(tip, old).ctx("walk the history", p)?;
    let old_commit = repo.find_commit(old).ctx("read the target", p)?;
    let tip_commit = repo.find_commit(tip).ctx("read the branch", p)?;
    let computed: std::result::Result<Oid, MergeOutcome> = match strategy {
        Strategy::FfOnly if fast_forward => Ok(tip),
        Strategy::FfOnly => Err(MergeOutcome::NotFastForward),
        Strategy::Merge if fast_forward => Ok(tip),
        Strategy::Merge => match merged_tree(&repo, p, &old_commit, &tip_commit)? {
            Err(files) => Err(MergeOutcome::Conflict { files }),
            Ok(tree) => {
                Ok(commit_tree(&repo, p, signature, signature, &tidy(message), tree, &[&old_commit, &tip_commit])?)
            }
        },
        Strategy::Squash => match merged_tree(&repo, p, &old_commit, &tip_commit)? {
            Err(files) => Err(MergeOutcome::Conflict { files }),
            Ok(tree) if tree == old_commit.tree_id() => Err(MergeOutcome::UpToDate),
            Ok(tree) => Ok(commit_tree(&repo, p, signature, signature, &tidy(message), tree, &[&old_commit])?),
        },
        Strategy::Rebase => rebase(&repo, p, &old_commit, &tip_commit, fast_forward, signature)?,
    };
    let new = match computed {
        Ok(new) => new,
        Err(outcome) => return Ok(Prepared::Finished(outcome)),
    };
    let plan = MergePlan { target, branch, branch_tip: tip, strategy, old, new, commits };
    if let Some(dirty) = dirty_checkout(&repo, p, &plan.target, old, new)? {
        return Ok(Prepared::Finished(dirty));
    }
    Ok(Prepared::Ready(plan))
}

/// The three-way merge of two commits as a tree in the object store, or
/// the conflicting paths.
fn merged_tree(
    repo: &Repository,
    p: &Path,
    ours: &git2::Commit<'_>,
    theirs: &git2::Commit<'_>,
) -> Result<std::result::Result<Oid, Vec<String>>> {
    let mut index = repo.merge_commits(ours, theirs, None).ctx("merge", p)?;
    if index.has_conflicts() {
        return Ok(Err(conflict_files(&index, p)?));
    }
    Ok(Ok(index.write_tree_to(repo).ctx("write the merged tree", p)?))
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
/// brings its clean checkouts along. Looks at the checkouts again first:
/// the person may have started editing since [`prepare_merge`].
///
/// `Err(TargetMoved)` when the target is no longer at `plan.old`: nothing
/// was overwritten; prepare again. `Err(CheckoutFailed)` when the ref
/// moved but a checkout could not be written (a full disk): the merge is
/// in, and [`recover`] finishes the checkout.
pub fn apply_merge(repo_path: &Path, plan: &MergePlan) -> Result<MergeOutcome> {
    let repo = open(repo_path)?;
    let p = repo_path;
    let current = current_target(&repo, &plan.target);
    if current != Some(plan.old) {
        return Err(MergeError::TargetMoved { target: plan.target.clone(), expected: plan.old, found: current });
    }
    if let Some(dirty) = dirty_checkout(&repo, p, &plan.target, plan.old, plan.new)? {
        return Ok(dirty);
    }
    let reflog = format!("corral: {} {} into {}", plan.strategy, plan.branch, plan.target);
    compare_and_swap(&repo, p, &plan.target, plan.old, plan.new, &reflog)?;

    let changed = changed_paths(&repo, p, plan.old, plan.new)?;
    let checkouts = checkouts(&repo, p, &plan.target)?;
    // Between the look above and the ref move the person may have saved a
    // file the merge writes: look again at just those paths, and if so put
    // the target back, so their checkout and the ref agree again.
    for checkout in checkouts.iter().filter(|c| !c.rebasing) {
        let blocked = blockers(checkout, plan.old, plan.new, &changed)?;
        if !blocked.is_empty() {
            let undo = format!("corral: undo {reflog}: {} changed meanwhile", checkout.path.display());
            if let Err(err) = compare_and_swap(&repo, p, &plan.target, plan.new, plan.old, &undo) {
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
    match prepare_merge(repo, branch, target, strategy, message, signature)? {
        Prepared::Ready(plan) => apply_merge(repo, &plan),
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

/// [`recover`], for a daemon that died while writing a checkout: a file
/// it was writing can be cut short, neither as before nor as after the
/// merge, which `recover` will not overwrite. Here each such file is first
/// copied under `rescue_dir` (its path kept), so nothing is lost, and then
/// brought to the merged version like the rest, so the checkout ends as
/// after the merge. Returns the outcome and the copies made.
pub fn recover_rescuing(
    repo_path: &Path,
    target: &str,
    expected_old: Oid,
    expected_new: Oid,
    rescue_dir: &Path,
) -> Result<(Recovery, Vec<PathBuf>)> {
    let first = recover(repo_path, target, expected_old, expected_new)?;
    let Recovery::CheckoutBlocked { worktree, files } = first else { return Ok((first, Vec::new())) };
    let mut rescued = Vec::new();
    for file in &files {
        let from = worktree.join(file);
        if !from.is_file() {
            continue; // A note such as "(a merge is in progress)", or a folder.
        }
        let to = rescue_dir.join(file);
        let copied = to.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::copy(&from, &to));
        copied.map_err(|e| MergeError::CheckoutFailed {
            target: target.to_string(),
            worktree: worktree.clone(),
            message: format!("cannot keep a copy of {}: {e}", from.display()),
        })?;
        rescued.push(to);
    }
    let repo = open(repo_path)?;
    let full = full_ref(target);
    let changed = changed_paths(&repo, repo_path, expected_old, expected_new)?;
    for checkout in checkouts(&repo, repo_path, &full)?.iter().filter(|c| !c.rebasing) {
        follow(checkout, expected_new, &changed).map_err(|e| MergeError::CheckoutFailed {
            target: full.clone(),
            worktree: checkout.path.clone(),
            message: e.message().to_string(),
        })?;
    }
    Ok((Recovery::Applied, rescued))
}

/// Moves `name` from `from` to `to`, or fails with `TargetMoved` if it is
/// not at `from` (git's ref lock makes the check and the write one step).
fn compare_and_swap(repo: &Repository, p: &Path, name: &str, from: Oid, to: Oid, reflog: &str) -> Result<()> {
    match repo.reference_matching(name, to, true, from, reflog) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), git2::ErrorCode::Modified | git2::ErrorCode::NotFound) => {
            Err(MergeError::TargetMoved { target: name.to_string(), expected: from, found: current_target(repo, name) })
        }
        Err(e) => Err(e).ctx(&format!("move {name}"), p),
    }
}

/// A worktree that has the target checked out.
struct Checkout {
    path: PathBuf,
    repo: Repository,
    /// HEAD is detached for a rebase of the target (git counts the target
    /// as checked out there): always busy, never written.
    rebasing: bool,
}

/// Every worktree, main and linked, with `target` checked out (or being
/// rebased). Worktrees whose folder is gone are skipped.
fn checkouts(repo: &Repository, p: &Path, target: &str) -> Result<Vec<Checkout>> {
    let common = open(repo.commondir())?;
    let mut candidates = Vec::new();
    let names = common.worktrees().ctx("list the worktrees", p)?;
    for name in names.iter().flatten() {
        let Ok(worktree) = common.find_worktree(name) else { continue };
        if worktree.validate().is_err() {
            continue;
        }
        if let Ok(linked) = Repository::open_from_worktree(&worktree) {
            candidates.push((clean_path(worktree.path()), linked));
        }
    }
    let main_path = common.workdir().filter(|_| !common.is_bare()).map(clean_path);
    if let Some(path) = main_path {
        candidates.insert(0, (path, common));
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
fn changed_paths(repo: &Repository, p: &Path, old: Oid, new: Oid) -> Result<Vec<Vec<u8>>> {
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

const WORKTREE_CHANGES: Status = Status::WT_NEW
    .union(Status::WT_MODIFIED)
    .union(Status::WT_DELETED)
    .union(Status::WT_TYPECHANGE)
    .union(Status::WT_RENAMED)
    .union(Status::WT_UNREADABLE);

struct Look {
    /// Tracked files modified or staged (against HEAD), and conflicts.
    tracked: Vec<String>,
    /// Paths whose working file differs from the index, or untracked.
    in_worktree: HashSet<Vec<u8>>,
}

fn look(checkout: &Checkout) -> Result<Look> {
    let mut options = git2::StatusOptions::new();
    options.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false).exclude_submodules(true);
    let statuses = checkout.repo.statuses(Some(&mut options)).ctx("read the status", &checkout.path)?;
    let mut tracked = Vec::new();
    let mut in_worktree = HashSet::new();
    for entry in statuses.iter() {
        let status = entry.status();
        if status.intersects(TRACKED_CHANGES) {
            tracked.push(lossy(entry.path_bytes()));
        }
        if status.intersects(WORKTREE_CHANGES) {
            in_worktree.insert(entry.path_bytes().to_vec());
        }
    }
    Ok(Look { tracked, in_worktree })
}

/// `TargetDirty` for the first checkout of `target` that is not clean
/// (against `old`, where its HEAD still is) or has files in the way of the
/// move to `new`.
fn dirty_checkout(repo: &Repository, p: &Path, target: &str, old: Oid, new: Oid) -> Result<Option<MergeOutcome>> {
    let checkouts = checkouts(repo, p, target)?;
    if checkouts.is_empty() {
        return Ok(None);
    }
    let changed = changed_paths(repo, p, old, new)?;
    for checkout in &checkouts {
        let mut files = BTreeSet::new();
        if checkout.rebasing {
            files.insert(format!("(a rebase of {target} is in progress)"));
        } else {
            if checkout.repo.state() != RepositoryState::Clean {
                files.insert(format!("(a {} is in progress)", state_name(checkout.repo.state())));
            }
            files.extend(look(checkout)?.tracked);
            files.extend(blockers(checkout, old, new, &changed)?);
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
/// the ref moves and in [`recover`] after it did.
fn blockers(checkout: &Checkout, old: Oid, new: Oid, changed: &[Vec<u8>]) -> Result<Vec<String>> {
    let repo = &checkout.repo;
    let p = &checkout.path;
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let old_tree = repo.find_commit(old).and_then(|c| c.tree()).ctx("read the old tree", p)?;
    let new_tree = repo.find_commit(new).and_then(|c| c.tree()).ctx("read the new tree", p)?;
    let mut index = repo.index().ctx("read the index", p)?;
    index.read(true).ctx("read the index", p)?;
    let in_worktree = look(checkout)?.in_worktree;
    let changed_set: HashSet<&[u8]> = changed.iter().map(Vec::as_slice).collect();
    let mut blocked = Vec::new();
    for path in changed {
        let (old_entry, new_entry) = (entry_at(&old_tree, path), entry_at(&new_tree, path));
        if [old_entry, new_entry].iter().flatten().any(|(_, mode)| *mode == GITLINK) {
            continue; // Submodules are not checked out by a merge either.
        }
        let rel = os_path(path);
        let conflicted = (1..=3).any(|stage| index.get_path(rel, stage).is_some());
        let staged = index.get_path(rel, 0).map(|e| e.id);
        let index_ok = !conflicted && (staged == old_entry.map(|e| e.0) || staged == new_entry.map(|e| e.0));
        let file_ok = if staged.is_some() && !in_worktree.contains(path) {
            true // The working file is as in the index.
        } else {
            [old_entry, new_entry].iter().any(|want| on_disk_is(repo, p, path, *want, &changed_set))
        };
        let folders_ok = path
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| &path[..i])
            .all(|folder| changed_set.contains(folder) || !is_there_but_not_a_folder(&p.join(os_path(folder))));
        if !(index_ok && file_ok && folders_ok) {
            blocked.push(lossy(path));
        }
    }
    Ok(blocked)
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
fn follow(checkout: &Checkout, new: Oid, changed: &[Vec<u8>]) -> std::result::Result<(), git2::Error> {
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
    let mut index = repo.index()?;
    index.read(true)?;
    let mut touched = false;
    for path in changed {
        let rel = os_path(path);
        let conflicted = (1..=3).any(|stage| index.get_path(rel, stage).is_some());
        let have = index.get_path(rel, 0).map(|e| (e.id, e.mode));
        match entry_at(&tree, path) {
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
    fn merge_tail_keeps_the_end_and_says_what_was_cut() {
        let mut tail = Tail::default();
        tail.push(b"start\n");
        assert_eq!(tail.text(), "start\n");
        for i in 0..5000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.starts_with("[corral: "), "{}", &text[..40]);
        assert!(text.ends_with("line 4999\n"));
        assert!(!text.contains("start"));
        assert!(text.len() <= GATE_OUTPUT_MAX + 64);
    }

    #[test]
    fn merge_tail_does_not_start_inside_a_character() {
        let mut tail = Tail::default();
        // One byte, then two-byte characters: the cut falls inside one.
        tail.push(b"a");
        tail.push("é".repeat(GATE_OUTPUT_MAX).as_bytes());
        assert_eq!(tail.cut % 2, 1);
        let text = tail.text();
        let body = text.split_once('\n').unwrap().1;
        assert!(!body.contains('\u{FFFD}'), "a cut character shows as a replacement");
    }

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

    #[test]
    fn merge_strategy_names_round_trip() {
        for strategy in [Strategy::FfOnly, Strategy::Merge, Strategy::Rebase, Strategy::Squash] {
            assert_eq!(strategy.as_str().parse::<Strategy>(), Ok(strategy));
            assert_eq!(serde_json::to_string(&strategy).unwrap(), format!("\"{strategy}\""));
        }
        assert!("fast-forward".parse::<Strategy>().unwrap_err().contains("ff-only"));
    }
}
