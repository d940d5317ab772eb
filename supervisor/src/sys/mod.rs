//! The operating system: processes and signals (`process`, the only
//! module that sends signals), the state folder's layout (`paths`),
//! reading an agent's output log into lines (`output`), running a merge
//! gate as a process with a time limit (`gate`), and the sandbox an agent
//! runs in: Landlock, rlimits and cgroups (`sandbox`, the only module that
//! applies them).
//!
//! Never does: journal, or decide anything about an agent's lifecycle.

pub mod gate;
pub mod logging;
pub mod output;
pub mod paths;
pub mod process;
pub mod sandbox;
