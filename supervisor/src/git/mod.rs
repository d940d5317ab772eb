//! git: worktrees (`worktree`) and a warm pool of them (`pool`), merging an agent's branch back (`merge`,
//! the engine) and the person's checkouts of the target (`checkout`).
//!
//! Owns: every change corral makes to a repository, its refs and the
//! person's checkout; the only users of git2 and of the `git` command
//! (besides the agents themselves). Never does: journal, decide policy
//! (the daemon decides when to merge), or run a gate (`sys::gate` does).
//!
//! git2's `Repository` is `Send` but not `Sync`: each function opens its
//! own, and callers run these on blocking threads.

pub mod checkout;
pub mod merge;
pub mod pool;
pub mod worktree;

/// Makes libgit2 treat objects as git does, once per process: objects
/// read are not hashed again to check them (git does not either; `git
/// fsck` is for that), and a tree or commit written is not checked for
/// every object it names to exist (corral writes only trees and commits
/// it computed from objects in the repository). Both checks made a merge
/// of a 2,000-file tree spend most of its time in SHA-1.
pub fn configure() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        git2::opts::strict_object_creation(false);
    });
}

/// The `git` command run in `repo`, with nothing of the caller's
/// environment that would point it at another repository or index.
pub(crate) fn git_command(repo: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new("git");
    command
        .arg("-C")
        .arg(repo)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(std::process::Stdio::null());
    command
}
