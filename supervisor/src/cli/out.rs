//! Standard output for the commands that print what they did and end:
//! [`say!`] is `println!` without its panic.
//!
//! A reader that went away (`corral ps --all | head -1`, EPIPE) has read
//! all it wanted: the command ends at once, quietly, with 0, as `corral
//! logs` does (what it was asked to do is done before it prints). Any
//! other failure (a full disk behind `> file`) is said on stderr and ends
//! the command with the code of other errors, 1. A command whose exit
//! code says how something went (`wait`, `merge`, `stop`) prints with
//! [`report!`] instead, so that no failure to print hides that code; a
//! command with work left after printing (the demo, `corral run`) says
//! itself how it treats a closed output.

use std::io::Write;

use crate::model::error::ErrorKind;

/// `println!` for a command's result: see the module doc.
macro_rules! say {
    () => { $crate::cli::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `println!` for a command whose exit code says how something went
/// (`wait`, `merge`, `stop`): a closed output never changes that code,
/// and any other failure is said on stderr.
macro_rules! report {
    ($($arg:tt)*) => { $crate::cli::out::write_outcome(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Writes `text` to standard output, flushed; a failure is said on stderr
/// (unless its reader went away) and the command goes on to its code.
pub(crate) fn write_outcome(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => cannot_write(&err),
        _ => {}
    }
}

/// Says on stderr that standard output could not be written, without
/// `eprintln!`'s panic when stderr is gone too.
fn cannot_write(err: &std::io::Error) {
    let _ = writeln!(std::io::stderr().lock(), "corral: cannot write to standard output: {err}");
}

/// Writes `text` to standard output, flushed; a failure ends the command
/// (see the module doc).
pub(crate) fn write(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_fmt(text).and_then(|()| out.flush()) {
        failed(&err);
    }
}

/// Writes `bytes` to standard output, flushed; a failure ends the command
/// (see the module doc).
pub(crate) fn write_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_all(bytes).and_then(|()| out.flush()) {
        failed(&err);
    }
}

/// Ends the command for a write to standard output that failed: quietly
/// with 0 when its reader went away, with 1 and a line on stderr otherwise.
pub(crate) fn failed(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    cannot_write(err);
    std::process::exit(ErrorKind::Other.exit_code())
}
