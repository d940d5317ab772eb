//! The event stream: journal lines from a seq on, then (with `follow`)
//! each new one as the writer publishes it. Read from the file, so a
//! subscriber misses and repeats nothing between two reads.

use std::sync::Arc;

use super::Daemon;
use crate::daemon::journal::JournalReader;
use crate::model::address::Address;
use crate::wire::protocol::{framed, Response};

pub(super) async fn stream_events(
    daemon: &Arc<Daemon>,
    client_reader: &mut tokio::net::unix::OwnedReadHalf,
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    since: u64,
    follow: bool,
    agent: Option<String>,
) -> std::io::Result<()> {
    let filter = match agent.as_deref().map(Address::parse).transpose() {
        Ok(filter) => filter,
        Err(err) => return framed::write(writer, &Response::Error(err)).await,
    };
    let mut seq = daemon.store.subscribe();
    let mut reader = JournalReader::open(&daemon.state.journal(), since).map_err(std::io::Error::other)?;
    let mut hangup = [0u8; 1];
    loop {
        let durable = *seq.borrow_and_update();
        for event in reader.read_new(durable.len).map_err(std::io::Error::other)? {
            let wanted = match (&filter, &event.agent) {
                (None, _) => true,
                (Some(prefix), Some(agent)) => agent.is_within(prefix),
                (Some(_), None) => false,
            };
            if wanted {
                framed::write(writer, &Response::Event { event: Box::new(event) }).await?;
            }
        }
        if !follow {
            return framed::write(writer, &Response::End).await;
        }
        tokio::select! {
            _ = seq.changed() => {}
            // The client hung up.
            _ = tokio::io::AsyncReadExt::read(client_reader, &mut hangup) => return Ok(()),
        }
    }
}
