//! The operating system: processes and signals (`process`, the only
//! module that sends signals), the state folder's layout (`paths`), and
//! reading an agent's output log into lines (`output`).
//!
//! Never does: journal, or decide anything about an agent's lifecycle.

pub mod output;
pub mod paths;
pub mod process;
