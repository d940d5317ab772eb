//! The merge queue: one worker merging agents' branches one at a time, and
//! the recovery of merges a killed daemon left under way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{blocking, Daemon};
use crate::git::worktree;
use crate::model::address::Address;
use crate::model::error::Error;
use crate::model::event::EventBody;
use crate::model::lifecycle::{AgentRecord, AgentState, MergeState};

/// One merge to do: an agent's branch onto its target.
pub(super) struct MergeJob {
    address: Address,
    strategy: Option<crate::git::merge::Strategy>,
    /// Told the agent's record once the merge settled.
    reply: Option<oneshot::Sender<Option<AgentRecord>>>,
}

/// Puts an agent in the merge queue (journaled, so a restart resumes it).
pub(super) async fn enqueue_merge(
    daemon: &Arc<Daemon>,
    address: &Address,
    strategy: Option<crate::git::merge::Strategy>,
    reply: Option<oneshot::Sender<Option<AgentRecord>>>,
) {
    if let Some(record) = daemon.record(address) {
        daemon.commit_logged(vec![daemon.draft(&record, EventBody::MergeQueued { strategy })]).await;
    }
    let _ = daemon.merges.send(MergeJob { address: address.clone(), strategy, reply });
}

/// The one merge worker: merges happen one at a time, in queue order.
///
/// It takes no job before `recovered` (or its sender is gone): the merges
/// a killed daemon left under way are finished first ([`resume_merges`]),
/// while the daemon already answers, so nothing runs against a
/// half-finished merge.
pub(super) fn start_merge_queue(
    daemon: &Arc<Daemon>,
    mut jobs: mpsc::UnboundedReceiver<MergeJob>,
    recovered: oneshot::Receiver<()>,
) {
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let _ = recovered.await;
        let mut kept = Kept::default();
        while let Some(job) = jobs.recv().await {
            run_merge(&daemon, &job, &mut kept).await;
            let record = daemon.record(&job.address);
            if let Some(settled) = &record {
                super::notices::merge_settled(&daemon, settled).await;
            }
            if let Some(MergeState::Waiting { .. }) = record.as_ref().and_then(|r| r.merge_state.as_ref()) {
                // The person's checkout of the target has uncommitted changes:
                // look again in a while, without holding up the queue.
                retry_later(&daemon, &job.address, job.strategy, |r| {
                    matches!(r.merge_state, Some(MergeState::Waiting { .. }))
                });
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(record);
            }
        }
    });
}

/// The repository, opened once for the merge worker and kept between
/// merges (see [`Opened`](crate::git::merge::Opened)): one for merging,
/// one for looking at the person's checkouts beside it.
#[derive(Default)]
struct Kept {
    merge: Option<crate::git::merge::Opened>,
    look: Option<crate::git::merge::Opened>,
}

type OnKept<T> = tokio::task::JoinHandle<(Option<crate::git::merge::Opened>, Result<T, Error>)>;

/// Runs `f` off the runtime on a kept repository (opened first if none is
/// kept); the repository comes back with the answer, unless `f` failed,
/// so a handle in doubt is never used again.
fn on_kept<T: Send + 'static>(
    kept: Option<crate::git::merge::Opened>,
    path: PathBuf,
    f: impl FnOnce(&crate::git::merge::Opened) -> Result<T, Error> + Send + 'static,
) -> OnKept<T> {
    tokio::task::spawn_blocking(move || {
        let opened = match kept {
            Some(opened) => opened,
            None => match crate::git::merge::Opened::open(&path) {
                Ok(opened) => opened,
                Err(err) => return (None, Err(Error::from(err))),
            },
        };
        let answer = f(&opened);
        (answer.is_ok().then_some(opened), answer)
    })
}

/// The answer of an [`on_kept`] task, putting its repository back.
async fn kept_answer<T>(task: OnKept<T>, slot: &mut Option<crate::git::merge::Opened>) -> Result<T, Error> {
    match task.await {
        Ok((opened, answer)) => {
            *slot = opened;
            answer
        }
        Err(err) => Err(Error::other(format!("a worker thread failed: {err}"))),
    }
}

/// Puts a merge back in the queue after [`MERGE_RETRY`], if the agent's
/// record then still says it `waits`.
fn retry_later(
    daemon: &Arc<Daemon>,
    address: &Address,
    strategy: Option<crate::git::merge::Strategy>,
    waits: fn(&AgentRecord) -> bool,
) {
    let (daemon, address) = (daemon.clone(), address.clone());
    tokio::spawn(async move {
        tokio::time::sleep(MERGE_RETRY).await;
        if daemon.record(&address).is_some_and(|r| waits(&r)) {
            let _ = daemon.merges.send(MergeJob { address, strategy, reply: None });
        }
    });
}

/// How often a merge waiting for a clean checkout looks again.
pub(super) const MERGE_RETRY: Duration = Duration::from_secs(2);

/// True for a git error that a later try may not meet (another process
/// holds a lock): the merge waits instead of being refused.
pub(super) fn is_lock_error(message: &str) -> bool {
    message.contains("failed to lock") || message.contains(".lock") || message.contains("index is locked")
}

/// Commits the agent's leftovers, runs its gate, then merges, journaling
/// `merge_started` (with the old and new target) before moving the target.
async fn run_merge(daemon: &Arc<Daemon>, job: &MergeJob, kept: &mut Kept) {
    let Some(record) = daemon.record(&job.address) else { return };
    let journal = |body: EventBody| {
        let (daemon, record) = (daemon.clone(), record.clone());
        async move {
            // A locked ref is a wait, not a refusal.
            let body = match body {
                EventBody::MergeRefused { why } if is_lock_error(&why) => {
                    EventBody::MergeWaiting { why: format!("{why}; corral tries again"), files: Vec::new() }
                }
                body => body,
            };
            // A merge that keeps waiting for the same thing says so once.
            if let (EventBody::MergeWaiting { why, files }, Some(MergeState::Waiting { why: was, files: had })) =
                (&body, daemon.record(&record.address).and_then(|r| r.merge_state))
            {
                if *why == was && *files == had {
                    return;
                }
            }
            daemon.commit_logged(vec![daemon.draft(&record, body)]).await;
        }
    };
    let Some(target) = record.merge.target.clone() else {
        let why = "no target branch (no branch was checked out when it was spawned): pass --target".to_string();
        return journal(EventBody::MergeRefused { why }).await;
    };
    let strategy = job.strategy.unwrap_or(record.merge.strategy);
    let repo = daemon.state.repo_root.clone();
    // Whether the person has changed anything in a checkout of the target
    // is a status of their whole checkout, as slow as the rest of the
    // merge: it runs on another thread beside the leftovers' commit (or,
    // after a gate, beside the merge's computing).
    let look_at_checkouts = |look: &mut Option<crate::git::merge::Opened>| {
        let target = target.clone();
        on_kept(look.take(), repo.clone(), move |opened| {
            crate::git::merge::checkout_changes(opened, &target).map_err(Error::from)
        })
    };
    let has_worktree = record.worktree.exists() && !record.removed;
    let gated = has_worktree && record.merge.gate.is_some();
    let mut changes = (!gated).then(|| look_at_checkouts(&mut kept.look));

    if has_worktree {
        let (path, branch, message) = (
            record.worktree.clone(),
            record.branch.clone(),
            format!("corral: work {} left uncommitted\n\nTask {}: {}", record.address, record.task_id, record.task),
        );
        // A daemon killed while it committed these leftovers left the
        // worktree's index locked, for every later try: a lock older than
        // this daemon, in the worktree of an agent that ended, is that.
        let (repo_root, started, ended) = (repo.clone(), daemon.started, record.state.is_terminal());
        let committed = {
            let _git = daemon.git.lock().await;
            blocking(move || {
                if ended {
                    for lock in worktree::clear_stale_agent_locks(&repo_root, &path, &branch, started) {
                        tracing::info!("removed {}, left by a killed daemon", lock.display());
                    }
                }
                crate::git::merge::commit_leftovers(&path, &branch, ("corral", "corral@localhost"), &message)
                    .map_err(Error::from)
            })
            .await
        };
        if let Err(err) = committed {
            return journal(EventBody::MergeRefused { why: format!("cannot commit its leftovers: {err}") }).await;
        }
        // The gate runs in the agent's own worktree and holds no lock: a
        // gate of minutes (`cargo test`) never holds up a spawn, a stop or
        // a read. The merge queue itself waits for it, one merge at a time.
        // It runs in the agent's own environment (the one it was spawned
        // with: a cron job's PATH, a run file's `env`), not the daemon's.
        // A sandboxed agent's gate runs in its sandbox: it runs the agent's
        // code (its build scripts, its tests), so it gets no more than the
        // agent did.
        if let Some(gate) = record.merge.gate.clone() {
            let agent_dir = daemon.agent_dir(&record);
            let env = Some(super::reader::agent_env(&agent_dir.spec())).filter(|env| !env.is_empty());
            let restricts = record.enforced.as_ref().is_some_and(|e| e.restricts());
            let shim = crate::monitor::confining_shim(&agent_dir, restricts, "gate");
            let gate = match shim.is_empty() {
                true => gate,
                false => crate::sys::gate::Gate::Argv(shim.into_iter().chain(gate.argv()).collect()),
            };
            let mark = daemon.state.dir.display().to_string();
            if let Some(failed) = run_gate_closed(record.worktree.clone(), gate, env, mark).await {
                return journal(failed).await;
            }
        }
    }
    let _git = daemon.git.lock().await;

    let message =
        format!("corral: merge {} ({})\n\nTask {}: {}", record.address, record.branch, record.task_id, record.task);
    for _attempt in 0..5 {
        let changes = changes.take().unwrap_or_else(|| look_at_checkouts(&mut kept.look));
        let (branch, target2, message2) = (record.branch.clone(), target.clone(), message.clone());
        let prepare = on_kept(kept.merge.take(), repo.clone(), move |opened| {
            let signature = git2::Signature::now("corral", "corral@localhost")
                .map_err(|e| Error::other(e.message().to_string()))?;
            crate::git::merge::prepare_merge(opened, &branch, &target2, strategy, &message2, &signature)
                .map_err(Error::from)
        });
        let prepared = kept_answer(prepare, &mut kept.merge).await;
        let changes = kept_answer(changes, &mut kept.look).await;
        let plan = match prepared.and_then(|prepared| Ok(crate::git::merge::with_changes(prepared, changes?))) {
            Ok(crate::git::merge::Prepared::Ready(plan)) => plan,
            Ok(crate::git::merge::Prepared::Finished(outcome)) => {
                return journal(outcome_body(&repo, &target, outcome)).await
            }
            Err(err) => return journal(EventBody::MergeRefused { why: err.message }).await,
        };
        // The ref moves only once `merge_started` is in the journal: it is
        // what a restarted daemon finishes or undoes a cut-short merge by.
        // A journal that cannot take it leaves the merge queued, to try
        // again in a while.
        let started = EventBody::MergeStarted {
            target: target.clone(),
            old: plan.old.to_string(),
            new: plan.new.to_string(),
            strategy,
        };
        if let Err(err) = daemon.commit(vec![daemon.draft(&record, started)]).await {
            tracing::error!("{}: merge_started not journaled ({err}); its merge waits", record.address);
            // Still to merge: neither merging nor settled since.
            retry_later(daemon, &job.address, job.strategy, |r| {
                !matches!(r.merge_state, Some(MergeState::Merging { .. }))
                    && !r.merge_state.as_ref().is_some_and(MergeState::is_settled)
            });
            return;
        }
        let apply =
            on_kept(kept.merge.take(), repo.clone(), move |opened| Ok(crate::git::merge::apply_merge(opened, &plan)));
        let applied = kept_answer(apply, &mut kept.merge).await;
        if matches!(applied, Ok(Err(_))) {
            kept.merge = None; // In doubt after a failed apply: opened again next time.
        }
        match applied {
            Ok(Ok(outcome)) => return journal(outcome_body(&repo, &target, outcome)).await,
            // The target moved between computing and applying: compute again.
            Ok(Err(crate::git::merge::MergeError::TargetMoved { .. })) => continue,
            Ok(Err(err)) => return journal(EventBody::MergeRefused { why: Error::from(err).message }).await,
            Err(err) => return journal(EventBody::MergeRefused { why: err.message }).await,
        }
    }
    journal(EventBody::MergeRefused { why: format!("{target} kept moving; try `corral merge` again") }).await;
}

/// Runs a merge gate off the runtime. `None` only when it passed: a gate
/// whose runner fails (its thread panics or cannot be joined) did not pass,
/// so the merge never goes through on a gate nobody saw pass.
pub(super) async fn run_gate_closed(
    worktree: PathBuf,
    gate: crate::sys::gate::Gate,
    env: Option<std::collections::BTreeMap<String, String>>,
    mark: String,
) -> Option<EventBody> {
    let ran = tokio::task::spawn_blocking(move || {
        if std::env::var_os("CORRAL_TEST_GATE_RUNNER_PANICS").is_some() {
            // The regression test's way to make the runner itself fail.
            panic!("the gate runner was told to fail (CORRAL_TEST_GATE_RUNNER_PANICS)");
        }
        let timeout = Duration::from_secs(GATE_TIMEOUT_SECS);
        crate::sys::gate::run_gate(&worktree, &gate, env.as_ref(), timeout, &mark)
    })
    .await;
    match ran {
        Ok(result) if result.passed => None,
        Ok(result) => Some(EventBody::GateFailed { code: result.code, output: result.output }),
        Err(err) => Some(EventBody::GateFailed {
            code: None,
            output: format!("[corral: the gate runner failed ({err}); the gate counts as failed]\n"),
        }),
    }
}

/// Longest a merge gate may run.
pub(super) const GATE_TIMEOUT_SECS: u64 = 30 * 60;

pub(super) fn outcome_body(repo: &Path, target: &str, outcome: crate::git::merge::MergeOutcome) -> EventBody {
    use crate::git::merge::MergeOutcome;
    match outcome {
        MergeOutcome::Merged { new, commits, .. } => {
            EventBody::Merged {
                target: target.to_string(),
                commit: new.to_string(),
                commits,
                rescued: Vec::new(),
                kept: Vec::new(),
            }
        }
        MergeOutcome::UpToDate => EventBody::Merged {
            target: target.to_string(),
            commit: worktree::branch_tip(repo, target).unwrap_or_default(),
            commits: 0,
            rescued: Vec::new(),
            kept: Vec::new(),
        },
        MergeOutcome::Conflict { files } => EventBody::Conflict { files },
        MergeOutcome::NotFastForward => {
            EventBody::MergeRefused { why: format!("fast-forward only, and {target} has moved on") }
        }
        MergeOutcome::RebaseRefused { merges } => EventBody::MergeRefused {
            why: format!("a rebase would drop what its {} merge commit(s) carry; merge it with --strategy merge", merges.len()),
        },
        MergeOutcome::TargetDirty { worktree, files } => EventBody::MergeWaiting {
            why: format!(
                "{target} is checked out in {} with uncommitted changes; corral merges once they are committed or reverted",
                worktree.display()
            ),
            files,
        },
    }
}

/// After a restart: first finishes or redoes the merges the journal says
/// were under way (clearing git locks the dead daemon left, and keeping a
/// copy of any file it left cut short), then queues what was queued or
/// waiting, so nothing runs against a half-finished merge.
pub(super) async fn resume_merges(daemon: &Arc<Daemon>, started: std::time::SystemTime) {
    // A gate a killed daemon ran goes on without it: killed before its
    // merge is queued again, so no gate runs twice at once in a worktree
    // (two `cargo test` in one build folder).
    let mark = daemon.state.dir.display().to_string();
    let killed = blocking(move || {
        Ok(crate::sys::process::kill_with_env(crate::sys::gate::GATE_MARK, &mark, Duration::from_secs(5)))
    })
    .await;
    if let Ok(n @ 1..) = killed {
        tracing::info!("killed {n} process(es) of a merge gate a killed daemon left running");
    }
    // Only the agents with a merge to finish or to queue: a long history
    // is not copied.
    let agents: Vec<AgentRecord> =
        daemon.store.read(|table| table.agents.values().filter(|a| merge_to_resume(a)).cloned().collect());
    let mut requeue = Vec::new();
    if let Some(ms) = std::env::var("CORRAL_TEST_RECOVERY_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        // The tests' way to make a recovery as slow as a large checkout's.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    for agent in &agents {
        let Some(MergeState::Merging { target, old, new }) = agent.merge_state.clone() else { continue };
        let repo = daemon.state.repo_root.clone();
        let rescue = daemon.state.dir.join("rescued").join(format!("{}-{}", agent.address.flat(), agent.task_id));
        let (t, o, n) = (target.clone(), old.clone(), new.clone());
        // corral's own git changes (a spawn's worktree) wait for it.
        let _git = daemon.git.lock().await;
        let recovered = blocking(move || {
            for lock in worktree::clear_stale_locks(&repo, &t, started) {
                tracing::info!("removed {}, left by a killed merge", lock.display());
            }
            let old = git2::Oid::from_str(&o).map_err(|e| Error::other(e.message().to_string()))?;
            let new = git2::Oid::from_str(&n).map_err(|e| Error::other(e.message().to_string()))?;
            crate::git::merge::recover_rescuing(&repo, &t, old, new, &rescue).map_err(Error::from)
        })
        .await;
        match recovered {
            Ok((crate::git::merge::Recovery::Applied, rescue)) => {
                if !rescue.kept.is_empty() {
                    tracing::warn!(
                        "{}: finished its merge after a crash, keeping the files changed meanwhile: {}",
                        agent.address,
                        rescue.kept.join(", ")
                    );
                }
                let crate::git::merge::Rescue { rescued, kept } = rescue;
                let body = EventBody::Merged { target, commit: new, commits: 0, rescued, kept };
                daemon.commit_logged(vec![daemon.draft(agent, body)]).await;
            }
            // Not applied (or the target moved on): do it again.
            _ => requeue.push((agent.address.clone(), agent.merge_asked)),
        }
    }
    for agent in agents {
        if !matches!(agent.merge_state, Some(MergeState::Merging { .. })) {
            requeue.push((agent.address.clone(), agent.merge_asked));
        }
    }
    // By the strategy each was asked for, not by the agent's own.
    for (address, strategy) in requeue {
        enqueue_merge(daemon, &address, strategy, None).await;
    }
}

/// A merge a restarted daemon finishes (`Merging`) or queues again
/// (queued, waiting, or an automatic one not asked for yet).
fn merge_to_resume(agent: &AgentRecord) -> bool {
    let auto = agent.merge.policy == crate::config::MergePolicy::Auto && agent.state == AgentState::Succeeded;
    match agent.merge_state {
        Some(MergeState::Merging { .. } | MergeState::Queued | MergeState::Waiting { .. }) => true,
        None => auto,
        _ => false,
    }
}
