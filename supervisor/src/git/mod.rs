//! git: worktrees (`worktree`) and merging an agent's branch back
//! (`merge`).
//!
//! Owns: every change corral makes to a repository, its refs and the
//! person's checkout; the only users of git2 and of the `git` command
//! (besides the agents themselves). Never does: journal, decide policy
//! (the daemon decides when to merge), or run a gate.
//!
//! git2's `Repository` is `Send` but not `Sync`: each function opens its
//! own, and callers run these on blocking threads.

pub mod merge;
pub mod worktree;
