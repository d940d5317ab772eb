//! The wire protocol between `corral` clients and the daemon.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON, at
//! most `MAX_FRAME` bytes. The client opens with `Request::Hello`; the
//! daemon answers `Response::Hello` with its protocol version, and a client
//! that speaks another version stops there with a clear message. Then one
//! request gets one response, except the follow requests (`Logs`, `Events`
//! with `follow`), which get a stream of frames ending in `Response::End`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::error::Error;
use crate::model::event::Event;
use crate::model::lifecycle::AgentRecord;

pub const PROTOCOL_VERSION: u32 = 1;
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
    },
    Spawn(Box<SpawnRequest>),
    /// Agents, a page at a time (see `daemon::listing`): ask again
    /// `after` the answer's `next` until it has none.
    List {
        /// Agents `gc` removed too.
        all: bool,
        /// Only the recent view: agents not done, and those that ended
        /// last (`corral ps` without `--all`).
        #[serde(default)]
        recent: bool,
        /// Only this agent and those below it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        under: Option<String>,
        /// The page after this address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// One agent's record and where its files are (`view`, `logs`, `attach`).
    Info {
        address: String,
    },
    Events {
        since: u64,
        follow: bool,
        agent: Option<String>,
    },
    /// Stops the agent and its subtree (`/root`: every agent). Without a
    /// grace, each agent's own (`Spawned::grace_secs`, else 10 s).
    Stop {
        address: String,
        #[serde(default)]
        grace_secs: Option<f64>,
    },
    Wait {
        addresses: Vec<String>,
        timeout_secs: Option<f64>,
    },
    /// Removes the worktrees of agents that are done (with
    /// `older_than_secs`, only of those that ended at least that long ago).
    Gc {
        force: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than_secs: Option<f64>,
    },
    /// Merges an ended agent's branch through the merge queue (or retries);
    /// answered with the agent once the merge settled.
    Merge {
        address: String,
        strategy: Option<crate::git::merge::Strategy>,
    },
    /// What an agent changed, as a patch.
    Diff {
        address: String,
    },
    /// Gives an idle (ended) agent its next task in the same worktree; a
    /// busy one only with `queue` (it gets the task when it finishes).
    Assign {
        address: String,
        task: String,
        queue: bool,
    },
    /// Queues a message for a running agent; answered with its id.
    Send {
        to: String,
        from: String,
        text: String,
        /// The sender's own key for the message: the same key sent again
        /// (a retry after a lost connection) is answered with the message
        /// it already queued, not a second one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Raises an agent's token and/or cost limit by these amounts (each
    /// greater than 0), journaling who asked; a paused agent whose budget
    /// is no longer spent runs again. Answered with the agent.
    RaiseBudget {
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add_tokens: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add_cost: Option<f64>,
        by: String,
    },
    /// Stops the daemon; agents keep running under their monitors.
    Shutdown,
}

/// Everything needed to start one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub name: String,
    /// Absolute address of the parent; `/root` when absent.
    pub parent: Option<String>,
    /// The task; empty takes the role's `task` from corral.toml.
    pub task: String,
    /// A role from corral.toml (`[agents.NAME]`).
    #[serde(default)]
    pub role: Option<String>,
    /// Settings given on the command line; they override corral.toml.
    #[serde(default)]
    pub settings: crate::config::AgentConfig,
    /// Start from a copy of the parent's Claude Code session.
    #[serde(default)]
    pub fork_session: bool,
    /// For `generic`, the command; for another harness, extra arguments.
    pub command: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL when corral stops it (default:
    /// `[supervisor] grace`, else 10).
    #[serde(default)]
    pub grace_secs: Option<f64>,
    pub base: Option<String>,
    /// The client's environment: the agent runs with it (plus CORRAL_*).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        pid: u32,
        /// Which build of corral the daemon runs (see `build_id`).
        #[serde(default)]
        build: String,
        /// The file it runs from, cheaply (see `binary_stamp`): a client
        /// of the same file need not hash its binary to know the build.
        #[serde(default)]
        stamp: String,
    },
    Spawned(Spawned),
    /// One page of a `List`.
    Agents {
        agents: Vec<AgentRecord>,
        /// Ask again after this address for the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        /// How many agents the recent view left out.
        #[serde(default)]
        older: usize,
    },
    Info {
        agent: Box<AgentRecord>,
        log: PathBuf,
        monitor_socket: PathBuf,
    },
    Event {
        event: Box<Event>,
    },
    Stopped {
        agents: Vec<AgentRecord>,
    },
    Waited {
        agents: Vec<AgentRecord>,
        timed_out: bool,
    },
    Gc {
        removed: Vec<GcEntry>,
        kept: Vec<GcEntry>,
    },
    Sent {
        message_id: String,
    },
    Agent {
        agent: Box<AgentRecord>,
    },
    Diff {
        patch: String,
    },
    Ok,
    End,
    Error(Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spawned {
    pub address: String,
    pub task_id: String,
    pub branch: String,
    pub worktree: PathBuf,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcEntry {
    pub address: String,
    pub worktree: PathBuf,
    pub why: String,
    /// The branch gc deleted with the worktree, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_branch: Option<String>,
}

/// Identifies the running binary: its version and a hash of its bytes,
/// e.g. `0.1.0+x3.5f0c…`. A client that finds a daemon of another build
/// replaces it (the agents keep running under their monitors and are
/// re-adopted).
///
/// The hash is of the contents, not of the file's size and mtime: two
/// copies of one build (say one in ~/.cargo/bin and one copied elsewhere)
/// have the same id and share a daemon instead of replacing each other's,
/// while any rebuild that changes a byte gets a new id. An id embedded at
/// compile time by a build script could not see the final binary and
/// would have to guess which inputs matter (every crate, the toolchain,
/// the flags); the bytes themselves cannot be wrong. The hash is XXH3-128
/// (stable across Rust versions and platforms, about 10 GB/s: a few
/// milliseconds for a 20 MB binary), computed once per process, from
/// `/proc/self/exe`: the file this process runs, even when its path has
/// since been replaced by an upgrade. When the binary cannot be read, the
/// id falls back to its size and modification time.
pub fn build_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let running = std::fs::File::open("/proc/self/exe")
            .or_else(|_| std::env::current_exe().and_then(std::fs::File::open))
            .and_then(content_hash);
        let stamp = match running {
            Ok(hash) => format!("x3.{hash:032x}"),
            Err(_) => {
                use std::os::unix::fs::MetadataExt;
                std::env::current_exe()
                    .and_then(std::fs::metadata)
                    .map(|m| format!("{}.{}", m.size(), m.mtime_nsec() + m.mtime() * 1_000_000_000))
                    .unwrap_or_default()
            }
        };
        format!("{}+{stamp}", env!("CARGO_PKG_VERSION"))
    })
    .clone()
}

/// The binary this process runs, by file: device, inode, size and
/// modification time of `/proc/self/exe`. Equal stamps mean the very same
/// file, so the same build, with no hashing (a client command saves the
/// few milliseconds of [`build_id`]); different stamps say nothing (two
/// copies of one build), and then the build ids decide.
pub fn binary_stamp() -> String {
    use std::os::unix::fs::MetadataExt;
    static STAMP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STAMP
        .get_or_init(|| {
            std::fs::metadata("/proc/self/exe")
                .map(|m| format!("{}.{}.{}.{}.{}", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
                .unwrap_or_default()
        })
        .clone()
}

/// XXH3-128 of everything `input` holds, read in 1 MiB chunks.
fn content_hash(mut input: impl Read) -> std::io::Result<u128> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(hasher.digest128()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Request {
    /// The first page of a list of every agent (`all`: those `gc` removed
    /// too).
    pub fn list(all: bool) -> Request {
        Request::List { all, recent: false, under: None, after: None }
    }
}

/// Writes one frame. A body over [`MAX_FRAME`] is refused before a byte
/// is sent, as `InvalidInput` naming its size and the limit: the other
/// side would drop the connection, and the sender would take that for a
/// daemon gone away and try again, forever.
pub fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    check_size(body.len())?;
    out.write_all(&(body.len() as u32).to_be_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

/// Refuses a frame body over [`MAX_FRAME`] (see [`write_frame`]).
fn check_size(len: usize) -> std::io::Result<()> {
    if len <= MAX_FRAME {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "the message is {len} bytes, over the {} MiB ({MAX_FRAME}-byte) limit between corral and its daemon",
            MAX_FRAME >> 20
        ),
    ))
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit")));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}

/// The same framing on tokio streams, for the daemon.
pub mod framed {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Writes one frame; one over [`MAX_FRAME`] is refused as
    /// `InvalidInput`, nothing sent (see [`write_frame`]).
    pub async fn write<T: Serialize>(out: &mut (impl tokio::io::AsyncWrite + Unpin), value: &T) -> std::io::Result<()> {
        let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        check_size(body.len())?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        out.write_all(&frame).await?;
        out.flush().await
    }

    pub async fn read<T: for<'de> Deserialize<'de>>(
        input: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> std::io::Result<Option<T>> {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit")));
        }
        let mut body = vec![0u8; len];
        input.read_exact(&mut body).await?;
        // A whole frame that does not parse is `InvalidData`: the stream is
        // still in step, so the daemon answers it and goes on serving.
        serde_json::from_slice(&body).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_cap() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Hello { version: 1 }).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert!(matches!(back, Request::Hello { version: 1 }));

        let mut huge = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let err = read_frame::<Request>(&mut huge.as_slice()).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(read_frame::<Request>(&mut [].as_slice()).unwrap().is_none());
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_a_byte_is_sent() {
        // The body is the task and some JSON around it: a task of exactly
        // the limit makes a frame over it.
        let spawn = Request::Spawn(Box::new(SpawnRequest {
            name: "big".into(),
            parent: None,
            task: "x".repeat(MAX_FRAME),
            role: None,
            settings: Default::default(),
            fork_session: false,
            command: Vec::new(),
            grace_secs: None,
            base: None,
            env: BTreeMap::new(),
        }));
        let mut sent = Vec::new();
        let err = write_frame(&mut sent, &spawn).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        let message = err.to_string();
        let size = serde_json::to_vec(&spawn).unwrap().len();
        assert!(message.contains(&format!("is {size} bytes")), "names the size: {message}");
        assert!(message.contains(&format!("{MAX_FRAME}-byte")), "names the limit: {message}");
        assert!(message.contains("16 MiB"), "{message}");
        assert!(sent.is_empty(), "nothing is sent: {} bytes were", sent.len());

        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut sent = Vec::new();
        let err = runtime.block_on(framed::write(&mut sent, &spawn)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(sent.is_empty());

        // Just under the limit still goes through, and reads back.
        let Request::Spawn(mut fits) = spawn else { unreachable!() };
        let around =
            serde_json::to_vec(&Request::Spawn(Box::new(SpawnRequest { task: String::new(), ..*fits.clone() })))
                .unwrap()
                .len();
        fits.task.truncate(MAX_FRAME - around);
        let mut sent = Vec::new();
        write_frame(&mut sent, &Request::Spawn(fits)).unwrap();
        assert_eq!(sent.len(), MAX_FRAME + 4);
        assert!(read_frame::<Request>(&mut sent.as_slice()).unwrap().is_some());
    }

    #[test]
    fn the_build_id_hashes_the_bytes_once_and_fast() {
        // Same bytes, same hash, however they are chunked; one byte more, another.
        let bytes: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let started = std::time::Instant::now();
        let whole = content_hash(bytes.as_slice()).unwrap();
        let took = started.elapsed();
        let chunked = content_hash(std::io::Read::chain(&bytes[..3], &bytes[3..])).unwrap();
        assert_eq!(whole, chunked);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_ne!(content_hash(longer.as_slice()).unwrap(), whole);
        // XXH3-128 of nothing, as its reference implementation gives it:
        // the hash is stable across Rust versions.
        assert_eq!(content_hash([].as_slice()).unwrap(), 0x99aa06d3014798d86001c324468d497f);
        if !cfg!(debug_assertions) {
            assert!(took < std::time::Duration::from_millis(50), "20 MB took {took:?}");
        }

        let id = build_id();
        assert!(id.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+x3.")), "{id}");
        assert_eq!(build_id(), id);
    }
}
