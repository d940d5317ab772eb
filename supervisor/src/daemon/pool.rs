//! The worktree pool's owner: one task that keeps `[supervisor]
//! worktree_pool = N` worktrees ready (`git::pool`) for each base agents
//! spawn from, refilled in the background after each spawn, so a spawn
//! renames a ready worktree into place instead of checking out a tree.
//!
//! The bases are the branch checked out (a spawn without `--base`) and
//! every `--base` spawned from since the daemon started; each is resolved
//! again at every fill, so a base that moved gets new entries and its old
//! ones go. Fills run one at a time, off the runtime, holding no daemon
//! lock: a spawn meanwhile finds the pool short and checks out as without
//! one. With no pool set, what a pool left is removed.
//!
//! Never does: take an entry (a spawn does, under the git lock) or decide
//! what a worktree holds (git does).

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Daemon;
use crate::git::pool::Pool;

/// The pool of the daemon's repository, in `.pool` beside the agents'
/// worktrees (no agent's address flattens to a name starting with `.`).
pub(super) fn pool_of(state: &crate::sys::paths::StateDir) -> Arc<Pool> {
    Arc::new(Pool::new(&state.repo_root, &state.worktrees.join(".pool")))
}

/// Starts the owner: it cleans what a crash left half-made, fills for the
/// checked-out branch, then refills for each base it is sent (`None`: the
/// branch checked out).
pub(super) fn start_pool(daemon: &Arc<Daemon>, mut refills: mpsc::UnboundedReceiver<Option<String>>) {
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let pool = daemon.pool.clone();
        let mut bases: BTreeSet<Option<String>> = BTreeSet::from([None]);
        let cleaned = tokio::task::spawn_blocking({
            let pool = pool.clone();
            move || pool.clean()
        });
        let _ = cleaned.await;
        loop {
            fill(&daemon, &pool, &bases).await;
            let Some(base) = refills.recv().await else { return };
            bases.insert(base);
            // Spawns that came meanwhile need one fill, not one each.
            while let Ok(base) = refills.try_recv() {
                bases.insert(base);
            }
        }
    });
}

async fn fill(daemon: &Arc<Daemon>, pool: &Arc<Pool>, bases: &BTreeSet<Option<String>>) {
    let size = daemon.config().supervisor.worktree_pool.unwrap_or(0) as usize;
    let (repo, pool, bases) = (daemon.state.repo_root.clone(), pool.clone(), bases.clone());
    let worktrees = daemon.state.worktrees.clone();
    let filled = tokio::task::spawn_blocking(move || {
        if size == 0 {
            pool.empty();
            return Ok(());
        }
        crate::sys::paths::check_worktrees(&worktrees)?;
        // A base that no longer resolves (a deleted branch) keeps nothing.
        let commits: Vec<String> = bases
            .iter()
            .filter_map(|base| crate::git::worktree::resolve_base(&repo, base.as_deref()).ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for commit in &commits {
            pool.fill(commit, size, &commits)?;
        }
        Ok::<(), crate::model::error::Error>(())
    })
    .await;
    match filled {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!("the worktree pool could not be filled: {err}; spawns check out meanwhile"),
        Err(err) => tracing::warn!("the worktree pool's filler failed: {err}"),
    }
}
