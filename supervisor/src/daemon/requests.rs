//! Requests: one client connection (the hello, then requests until it
//! hangs up), and what each request does, by handing it to the owner of
//! what it touches.

use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use super::{agent, assign, blocking, events, listing, merges, ops, spawn, Daemon};
use crate::model::error::{Error, ErrorKind, Result};
use crate::sys::sandbox::{self, confine::Caller};
use crate::wire::protocol::{framed, Request, Response, PROTOCOL_VERSION};

pub(super) async fn serve_client(
    daemon: Arc<Daemon>,
    stream: UnixStream,
    stop: watch::Sender<bool>,
) -> std::io::Result<()> {
    // A client inside a sandboxed agent acts within that agent's subtree;
    // which agent it is, is looked up again at each request (an agent that
    // connected while it was starting is placed once its monitor is known).
    let peer = stream.peer_cred().ok().and_then(|c| c.pid()).map(|pid| pid as u32);
    let (mut reader, mut writer) = stream.into_split();
    match framed::read::<Request>(&mut reader).await? {
        Some(Request::Hello { version }) if version == PROTOCOL_VERSION => {
            let hello = Response::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
                build: daemon.build.clone(),
                stamp: crate::wire::protocol::binary_stamp(),
            };
            framed::write(&mut writer, &hello).await?;
        }
        Some(Request::Hello { version }) => {
            let message = format!(
                "this daemon speaks protocol {PROTOCOL_VERSION}, the client {version}: run `corral shutdown` with the old binary and retry"
            );
            return framed::write(&mut writer, &Response::Error(Error::other(message))).await;
        }
        _ => return Ok(()),
    }
    loop {
        let request = match framed::read::<Request>(&mut reader).await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                let error = Error::other(format!("the daemon cannot read this request: {err}"));
                framed::write(&mut writer, &Response::Error(error)).await?;
                continue;
            }
            Err(err) => return Err(err),
        };
        let refused = match peer.map(|pid| sandboxed_caller(&daemon, pid)) {
            Some(Caller::Agent(caller)) => sandbox::confine::check(&caller, &request).err(),
            Some(Caller::Unknown(why)) => Some(format!("refused: {why}")),
            Some(Caller::Outside) | None => None,
        };
        if let Some(why) = refused {
            framed::write(&mut writer, &Response::Error(Error::new(ErrorKind::Refused, why))).await?;
            continue;
        }
        match request {
            Request::Events { since, follow, agent } => {
                return events::stream_events(&daemon, &mut reader, &mut writer, since, follow, agent).await;
            }
            Request::Shutdown => {
                framed::write(&mut writer, &Response::Ok).await?;
                let _ = stop.send(true);
                return Ok(());
            }
            request => {
                let response = handle(&daemon, request).await.unwrap_or_else(Response::Error);
                match framed::write(&mut writer, &response).await {
                    // An answer over the wire's limit (a huge diff, say) was
                    // not sent: the client hears why, not a hang-up it would
                    // take for a daemon gone away.
                    Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
                        let error = Error::other(format!("the daemon's answer was not sent: {err}"));
                        framed::write(&mut writer, &Response::Error(error)).await?;
                    }
                    written => written?,
                }
            }
        }
    }
}

/// Where the process `pid` stands: inside a sandboxed agent (it is, or
/// descends from, the agent's monitor), outside them all, or not known.
/// The monitors are the records' and, for an agent still starting (or
/// started again by an assign) before its `started` is journaled, the one
/// its folder names (the monitor writes its pid before it starts the
/// agent).
fn sandboxed_caller(daemon: &Daemon, pid: u32) -> Caller {
    let sandboxed: Vec<(Option<u32>, crate::sys::paths::AgentDir, crate::model::address::Address)> =
        daemon.store.read(|table| {
            table
                .agents
                .values()
                .filter(|a| !a.state.is_terminal() && a.enforced.as_ref().is_some_and(|e| e.restricts()))
                .map(|a| (a.monitor_pid, daemon.agent_dir(a), a.address.clone()))
                .collect()
        });
    if sandboxed.is_empty() {
        return Caller::Outside;
    }
    let known = |at: u32| sandboxed.iter().find(|(m, _, _)| *m == Some(at)).map(|(_, _, a)| a.clone());
    match sandbox::confine::caller(pid, known) {
        Caller::Outside => {}
        placed => return placed,
    }
    let starting: Vec<(u32, crate::model::address::Address)> = sandboxed
        .iter()
        .filter_map(|(_, dir, address)| {
            let pid = std::fs::read_to_string(dir.monitor_pid()).ok()?.trim().parse().ok()?;
            Some((pid, address.clone()))
        })
        .collect();
    sandbox::confine::caller(pid, |at| starting.iter().find(|(m, _)| *m == at).map(|(_, a)| a.clone()))
}

pub(super) async fn handle(daemon: &Arc<Daemon>, request: Request) -> Result<Response> {
    match request {
        Request::Spawn(spawn) => spawn::spawn_agent(daemon, *spawn).await.map(Response::Spawned),
        Request::List { all, recent, under, after } => {
            let parse = |text: Option<String>| text.as_deref().map(crate::model::address::Address::parse).transpose();
            let query = listing::Query { all, recent, under: parse(under)?, after: parse(after)? };
            let page = daemon.store.read(|table| listing::page(table, &query, chrono::Utc::now()));
            let next = page.next.map(|a| a.to_string());
            // Put-away records are read once the table is let go.
            let agents = page
                .agents
                .into_iter()
                .filter_map(|listed| match listed {
                    listing::Listed::Record(record) => Some(*record),
                    listing::Listed::Away(address, spot) => daemon.store.load(&address, spot),
                })
                .collect();
            Ok(Response::Agents { agents, next, older: page.older })
        }
        Request::Info { address } => {
            let agent = daemon.find(&address)?;
            let dir = daemon.state.agent(agent.id);
            Ok(Response::Info { log: dir.log(), monitor_socket: dir.socket(), agent: Box::new(agent) })
        }
        Request::Stop { address, grace_secs } => ops::stop(daemon, &address, grace_secs).await,
        Request::Wait { addresses, timeout_secs } => ops::wait(daemon, &addresses, timeout_secs).await,
        Request::Gc { force, older_than_secs } => ops::gc(daemon, force, older_than_secs).await,
        Request::Merge { address, strategy } => {
            let agent = daemon.find(&address)?;
            if !agent.state.is_terminal() {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("{} is {}; its work merges once it has ended", agent.address, agent.state.as_str()),
                ));
            }
            let (reply, answer) = oneshot::channel();
            merges::enqueue_merge(daemon, &agent.address, strategy, Some(reply)).await;
            let agent = answer.await.ok().flatten().ok_or_else(|| Error::other("the merge queue stopped"))?;
            Ok(Response::Agent { agent: Box::new(agent) })
        }
        Request::Assign { address, task, queue } => assign::assign(daemon, &address, task, queue).await,
        Request::Diff { address } => {
            let agent = daemon.find(&address)?;
            let (repo, branch, base) = (daemon.state.repo_root.clone(), agent.branch.clone(), agent.base.clone());
            let patch = blocking(move || crate::git::merge::diff(&repo, &branch, &base).map_err(Error::from)).await?;
            Ok(Response::Diff { patch })
        }
        Request::Send { to, from, text, key } => {
            let agent = daemon.find(&to)?;
            let message_id = agent::send_message(daemon, &agent, from, text, key).await?;
            Ok(Response::Sent { message_id })
        }
        Request::RaiseBudget { address, add_tokens, add_cost, by } => {
            let agent = super::budgets::raise(daemon, &address, add_tokens, add_cost, by).await?;
            Ok(Response::Agent { agent: Box::new(agent) })
        }
        Request::Hello { .. } | Request::Events { .. } | Request::Shutdown => Err(Error::other("unexpected request")),
    }
}
