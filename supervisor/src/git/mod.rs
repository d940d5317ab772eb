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

/// The `git` command for a checkout of a whole tree in `repo` (a new
/// worktree): with parallel checkout, one worker a core, unless the
/// person's configuration says how many (`checkout.workers`). git checks
/// out in one process by default; on this kind of machine, most of a
/// 20,000-file checkout is the kernel creating files, which two workers do
/// in about 0.6 of the time (git itself keeps one for trees under
/// `checkout.thresholdForParallelism`, 100 files).
pub(crate) fn checkout_command(repo: &std::path::Path) -> std::process::Command {
    let mut command = git_command(repo);
    let configured = git2::Repository::open(repo)
        .and_then(|r| r.config())
        .and_then(|mut c| c.snapshot())
        .map(|c| c.get_i64("checkout.workers").is_ok());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if matches!(configured, Ok(false)) && cores > 1 {
        command.arg("-c").arg(format!("checkout.workers={cores}"));
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &std::process::Command) -> Vec<String> {
        command.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_checkout_runs_one_worker_a_core_unless_the_repository_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = format!("checkout.workers={cores}");
        assert_eq!(args(&checkout_command(dir.path())).contains(&workers), cores > 1, "{cores} cores");

        repo.config().unwrap().set_i64("checkout.workers", 1).unwrap();
        let given = args(&checkout_command(dir.path()));
        assert!(!given.iter().any(|a| a.starts_with("checkout.workers")), "overrode the person's setting: {given:?}");
    }
}
