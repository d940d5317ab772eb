//! The operating system: processes and signals (`process`, the only
//! module that sends signals), the state folder's layout (`paths`),
//! reading an agent's output log into lines (`output`), and running a
//! merge gate as a process with a time limit (`gate`).
//!
//! Never does: journal, or decide anything about an agent's lifecycle.

pub mod gate;
pub mod output;
pub mod paths;
pub mod process;
