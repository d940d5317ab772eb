//! What a sandboxed agent may ask of the daemon. The daemon runs outside
//! every sandbox, so a request from inside one must not reach past it: a
//! sandboxed agent spawns, stops, assigns and merges only within its own
//! subtree, raises budgets only strictly below itself (never the one it
//! runs under), and never removes worktrees (`gc`) or stops the daemon. It may
//! read anything (`ps`, `view`, `logs`, `events`, `diff`, `wait`) and send
//! messages to anyone (that is how agents talk), as itself or an agent
//! below it, never signed as another.
//!
//! Which agent a caller is comes from the kernel (the connecting process's
//! pid, `SO_PEERCRED`), never from what the caller says: the daemon walks
//! up from that pid to an agent's process or monitor.

use crate::model::address::Address;
use crate::wire::protocol::Request;

/// `Ok` when the agent at `caller` (sandboxed) may make `request`; else
/// why not.
pub fn check(caller: &Address, request: &Request) -> Result<(), String> {
    let below = |text: &str, refusal: &dyn Fn(&Address) -> String| -> Result<(), String> {
        let address = Address::resolve(text, caller).map_err(|e| e.message)?;
        match address.is_within(caller) {
            true => Ok(()),
            false => Err(format!("{caller} is sandboxed: it may {}", refusal(&address))),
        }
    };
    match request {
        Request::Spawn(spawn) => below(spawn.parent.as_deref().unwrap_or("/root"), &|at| {
            format!("spawn agents only below itself, not under {at}")
        }),
        Request::Stop { address, .. } => {
            below(address, &|at| format!("stop only itself and agents below it, not {at}"))
        }
        Request::Assign { address, .. } => {
            below(address, &|at| format!("assign tasks only to itself and agents below it, not to {at}"))
        }
        Request::Merge { address, .. } => {
            below(address, &|at| format!("merge only its own work and that of agents below it, not {at}'s"))
        }
        Request::Gc { .. } => Err(format!("{caller} is sandboxed: it may not remove worktrees (gc)")),
        Request::Shutdown => Err(format!("{caller} is sandboxed: it may not stop the daemon")),
        // Strictly below: the budget it runs under (its own, an
        // ancestor's) is never its to lift.
        // Who it says it is: itself or an agent below it, never another.
        Request::Send { from, .. } => below(from, &|at| format!("send messages only as itself, not as {at}")),
        Request::RaiseBudget { by, .. } if below(by, &|_| String::new()).is_err() => {
            Err(format!("{caller} is sandboxed: it may raise budgets only as itself, not as {by}"))
        }
        Request::RaiseBudget { address, .. } => match Address::resolve(address, caller) {
            Ok(at) if at != *caller && at.is_within(caller) => Ok(()),
            Ok(at) => {
                Err(format!("{caller} is sandboxed: it may raise only the budgets of agents below it, not {at}'s"))
            }
            Err(e) => Err(e.message),
        },
        Request::Hello { .. }
        | Request::List { .. }
        | Request::Info { .. }
        | Request::Events { .. }
        | Request::Wait { .. }
        | Request::Diff { .. } => Ok(()),
    }
}

/// Who a connecting process is, as far as sandboxes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Outside every sandboxed agent: its ancestors run up to init.
    Outside,
    /// A process of the sandboxed agent at this address.
    Agent(Address),
    /// Not known: a process on the way up is gone (the caller exited and
    /// left its connection to a child, say), or the chain is too long to
    /// follow. Refused everything: a guard fails closed.
    Unknown(String),
}

/// How far up the walk goes before it gives up (and the caller is
/// [`Caller::Unknown`]).
const MAX_DEPTH: usize = 256;

/// The sandboxed agent a process belongs to: the first of its ancestors
/// (itself included) that `monitor_of` names as an agent's monitor. Every
/// process of an agent descends from its monitor (which reaps orphans), so
/// the walk ends there; a walk that reaches init found none.
pub fn caller(pid: u32, monitor_of: impl Fn(u32) -> Option<Address>) -> Caller {
    match first_ancestor(pid, monitor_of) {
        Ok(Some(address)) => Caller::Agent(address),
        Ok(None) => Caller::Outside,
        Err(why) => Caller::Unknown(why),
    }
}

/// What `find` says of the first of `pid`'s ancestors (itself included)
/// it says anything of; `None` once the walk reaches init. An error when
/// the chain cannot be followed: a process on the way up is gone, or
/// there are more than [`MAX_DEPTH`] of them.
pub fn first_ancestor<T>(pid: u32, find: impl Fn(u32) -> Option<T>) -> Result<Option<T>, String> {
    let mut at = pid;
    for _ in 0..MAX_DEPTH {
        if let Some(found) = find(at) {
            return Ok(Some(found));
        }
        if at == 1 {
            return Ok(None);
        }
        at = crate::sys::process::parent_of(at).ok_or_else(|| {
            format!(
                "process {at} (of the chain up from the caller, pid {pid}) is gone, so corral cannot tell \
                 whether the request comes from inside a sandboxed agent"
            )
        })?;
    }
    Err(format!("the caller (pid {pid}) has over {MAX_DEPTH} ancestors; corral does not follow them all"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandboxed_agent_acts_only_below_itself() {
        let me = Address::parse("/root/a").unwrap();
        let stop = |address: &str| Request::Stop { address: address.into(), grace_secs: None };
        assert!(check(&me, &stop("/root/a")).is_ok());
        assert!(check(&me, &stop("/root/a/b")).is_ok());
        let err = check(&me, &stop("/root/b")).unwrap_err();
        assert_eq!(err, "/root/a is sandboxed: it may stop only itself and agents below it, not /root/b");
        assert!(check(&me, &stop("/root")).is_err());
        assert!(check(&me, &Request::Gc { force: false, older_than_secs: None }).is_err());
        assert!(check(&me, &Request::Shutdown).is_err());
        let send = Request::Send { to: "/root/b".into(), from: "/root/a".into(), text: "hi".into(), key: None };
        assert!(check(&me, &send).is_ok());
        assert!(check(&me, &Request::list(true)).is_ok());
        let raise = |address: &str| Request::RaiseBudget {
            address: address.into(),
            add_tokens: Some(10),
            add_cost: None,
            by: "/root/a".into(),
        };
        assert!(check(&me, &raise("/root/a/b")).is_ok());
        let err = check(&me, &raise("/root/a")).unwrap_err();
        assert_eq!(err, "/root/a is sandboxed: it may raise only the budgets of agents below it, not /root/a's");
        assert!(check(&me, &raise("/root")).is_err());
        assert!(check(&me, &raise("/root/b")).is_err());
        let forged = Request::Send { to: "/root/b".into(), from: "/root".into(), text: "hi".into(), key: None };
        assert_eq!(
            check(&me, &forged).unwrap_err(),
            "/root/a is sandboxed: it may send messages only as itself, not as /root"
        );
        let forged = Request::RaiseBudget {
            address: "/root/a/b".into(),
            add_tokens: Some(1),
            add_cost: None,
            by: "/root".into(),
        };
        assert!(check(&me, &forged).unwrap_err().contains("only as itself"));
    }

    #[test]
    fn a_caller_is_placed_by_its_ancestors_and_one_whose_chain_is_broken_is_unknown() {
        let me = std::process::id();
        let parent = crate::sys::process::parent_of(me).unwrap();
        let lead = Address::parse("/root/lead").unwrap();
        assert_eq!(caller(me, |_| None), Caller::Outside);
        assert_eq!(caller(me, |at| (at == parent).then(|| lead.clone())), Caller::Agent(lead));
        // A process that is gone (its pid above any in use) cannot be placed.
        let gone = caller(u32::MAX - 1, |_| None);
        assert!(matches!(&gone, Caller::Unknown(why) if why.contains("is gone")), "{gone:?}");
    }
}
