//! The wire: what the client and the daemon say to each other, as types
//! (`protocol`: one `Request` enum, one `Response` enum, length-framed with
//! a size cap and a version handshake).
//!
//! Owns: the frame format and the protocol version. Never does: act on a
//! request (the daemon does) or open a socket (the client and daemon do).

pub mod protocol;
