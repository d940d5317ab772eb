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
