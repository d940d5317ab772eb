//! The wire: both of corral's protocols, as types.
//!
//! - `protocol`: what the client and the daemon say to each other (one
//!   `Request` enum, one `Response` enum, length-framed with a size cap and
//!   a version handshake).
//! - `monitor`: what the daemon and an agent's monitor say to each other
//!   (JSON lines on `monitor.sock`), and the files between them
//!   (`spec.json`, `exit.json`).
//!
//! Owns: the frame format, the protocol version and every message's JSON
//! shape. Never does: act on a message (the daemon and the monitor do) or
//! open a socket (the client, the daemon and the monitor do).

pub mod monitor;
pub mod protocol;
