//! The event feed of `corral top` (and of `corral wait` on a terminal): a
//! thread that reads the daemon's agent list once, then every journaled
//! event from the first on (the same fold the daemon keeps, so nothing is
//! polled and nothing is missed), then follows new ones as they are
//! journaled. It hands them over a channel and reconnects from the last
//! seq it saw when the daemon goes away (a restart, an upgrade).
//!
//! Never does: start a daemon on a reconnect. The first connection starts
//! one like any command; a later one only finds what runs, so an old
//! `corral top` never replaces a newer daemon that an upgrade started.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use crate::cli::client::Client;
use crate::model::event::Event;
use crate::model::lifecycle::AgentRecord;
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response};

/// At most this many events go in one message while catching up.
const BATCH: usize = 512;

/// What the feed hands over.
#[derive(Debug)]
pub enum Feed {
    /// The daemon's agent list, for a first picture before the journal is read.
    Snapshot(Vec<AgentRecord>),
    /// Events in journal order, each after the previous message's.
    Events(Vec<Event>),
    /// Every event journaled so far has been handed over; what follows is live.
    CaughtUp,
    /// The daemon cannot be reached (why); the feed keeps trying.
    Lost(String),
}

/// Starts the feed for the repository of `state`. The thread ends when
/// the receiver is dropped and the next message cannot be handed over.
pub fn start(state: StateDir) -> Receiver<Feed> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("corral-feed".into())
        .spawn(move || run(&state, &tx))
        .expect("a thread can be started");
    rx
}

/// Why a connected stretch ended.
enum Stop {
    /// The receiver went away: the thread ends.
    Gone,
    /// The daemon went away (why): connect again.
    Lost(String),
}

impl From<crate::model::error::Error> for Stop {
    fn from(err: crate::model::error::Error) -> Stop {
        Stop::Lost(err.message)
    }
}

fn run(state: &StateDir, tx: &Sender<Feed>) {
    let mut since = 0u64;
    let mut first = true;
    loop {
        let Stop::Lost(why) = session(state, tx, &mut since, first) else { return };
        first = false;
        if tx.send(Feed::Lost(why)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One connected stretch: the list, the journal from `since`, then live
/// events until the daemon goes away.
fn session(state: &StateDir, tx: &Sender<Feed>, since: &mut u64, first: bool) -> Stop {
    match stretch(state, tx, since, first) {
        Ok(never) => match never {},
        Err(stop) => stop,
    }
}

fn stretch(
    state: &StateDir,
    tx: &Sender<Feed>,
    since: &mut u64,
    first: bool,
) -> Result<std::convert::Infallible, Stop> {
    let connect = || match first {
        true => Client::connect(state),
        false => Client::connect_existing(state),
    };
    let mut client = connect()?;
    if let Ok((agents, _)) = client.list(true, false, None) {
        send(tx, Feed::Snapshot(agents))?;
    }
    drop(client);

    // What is journaled already, to its end...
    let mut client = connect()?;
    client.send(&Request::Events { since: *since, follow: false, agent: None })?;
    let mut batch = Vec::new();
    let ended = loop {
        match client.receive() {
            Ok(Some(Response::Event { event })) => {
                *since = event.seq;
                batch.push(*event);
                if batch.len() >= BATCH {
                    send(tx, Feed::Events(std::mem::take(&mut batch)))?;
                }
            }
            Ok(Some(Response::End)) => break Ok(()),
            Ok(Some(_)) => break Err(Stop::Lost("the daemon gave an unexpected answer".into())),
            Ok(None) => break Err(Stop::Lost("the daemon closed the event stream".into())),
            Err(err) => break Err(Stop::from(err)),
        }
    };
    // What was read goes over even when the stream broke: `since` is past it.
    if !batch.is_empty() {
        send(tx, Feed::Events(batch))?;
    }
    ended?;
    send(tx, Feed::CaughtUp)?;

    // ...then each new one as it is journaled.
    let mut client = connect()?;
    client.send(&Request::Events { since: *since, follow: true, agent: None })?;
    loop {
        match client.receive()? {
            Some(Response::Event { event }) => {
                *since = event.seq;
                send(tx, Feed::Events(vec![*event]))?;
            }
            Some(Response::End) | None => return Err(Stop::Lost("the daemon closed the event stream".into())),
            Some(_) => return Err(Stop::Lost("the daemon gave an unexpected answer".into())),
        }
    }
}

fn send(tx: &Sender<Feed>, message: Feed) -> Result<(), Stop> {
    tx.send(message).map_err(|_| Stop::Gone)
}
