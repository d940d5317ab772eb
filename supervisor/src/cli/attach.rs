//! `corral attach`: the agent's terminal, interactive, raw; Ctrl-]
//! detaches. The terminal's size goes to the agent at once and on every
//! SIGWINCH (a `resize` connection to its monitor).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use super::commands::info;
use crate::model::error::{Error, ErrorKind, Result};
use crate::sys::paths::StateDir;

/// Ctrl-]: the detach key, as in telnet.
const DETACH_KEY: u8 = 0x1d;

/// `corral attach`, and Enter in `corral top`.
pub(crate) fn attach(state: &StateDir, address: &str) -> Result<i32> {
    let (agent, _, socket) = info(state, address)?;
    if agent.state.is_terminal() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "{} has ended ({}); `corral logs {}` shows its output",
                agent.address,
                agent.state.as_str(),
                agent.address
            ),
        ));
    }
    // Watched from before the size is read, so no change of it is missed.
    let winch = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH]).ok();
    let size = terminal_size();
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| Error::other(format!("cannot reach the monitor of {}: {e}", agent.address)))?;
    let hello = match size {
        Some((rows, cols)) => format!("{{\"role\":\"attach\",\"replay\":8192,\"rows\":{rows},\"cols\":{cols}}}\n"),
        None => "{\"role\":\"attach\",\"replay\":8192}\n".to_string(),
    };
    stream.write_all(hello.as_bytes()).map_err(|e| Error::other(e.to_string()))?;
    // The stream is raw bytes; each new size goes on a connection of its own.
    let winch = match (winch, size) {
        (Some(mut signals), Some(mut sent)) => {
            let handle = signals.handle();
            let socket = socket.clone();
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    match terminal_size() {
                        Some(now) if now != sent => {
                            sent = now;
                            send_resize(&socket, now);
                        }
                        _ => {}
                    }
                }
            });
            Some(handle)
        }
        _ => None,
    };
    let stdin = std::io::stdin();
    let raw = stdin.is_terminal().then(RawTerminal::enable).transpose()?;
    if raw.is_some() {
        eprint!("attached to {} (Ctrl-] detaches)\r\n", agent.address);
    }
    let mut from_agent = stream.try_clone().map_err(|e| Error::other(e.to_string()))?;
    let printer = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 8192];
        loop {
            match from_agent.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut input = stdin.lock();
    let mut buf = [0u8; 1024];
    let detached = loop {
        if printer.is_finished() {
            break false;
        }
        let n = match input.read(&mut buf) {
            // SIGWINCH may interrupt the read.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break true,
            Ok(n) => n,
        };
        if let Some(at) = buf[..n].iter().position(|&b| b == DETACH_KEY) {
            let _ = stream.write_all(&buf[..at]);
            break true;
        }
        if stream.write_all(&buf[..n]).is_err() {
            break false;
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = printer.join();
    if let Some(winch) = winch {
        winch.close();
    }
    drop(raw);
    if detached {
        eprintln!("\ndetached from {}", agent.address);
    } else {
        eprintln!("\n{} ended", agent.address);
    }
    Ok(0)
}

/// The size (rows, columns) of the terminal on stdout or stdin, if either is one.
fn terminal_size() -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()].into_iter().find_map(|fd| {
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ only writes a `winsize` into `size`.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
        (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
    })
}

/// Tells the monitor at `socket` the terminal's new size, and waits until
/// it has applied it (it closes the connection), so sizes arrive in order.
fn send_resize(socket: &Path, (rows, cols): (u16, u16)) {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let hello = format!("{{\"role\":\"resize\",\"rows\":{rows},\"cols\":{cols}}}\n");
    if stream.write_all(hello.as_bytes()).is_ok() {
        let _ = stream.read_to_end(&mut Vec::new());
    }
}

/// Puts the terminal in raw mode; restores it when dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enable() -> Result<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(|e| Error::other(format!("cannot read the terminal mode: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(|e| Error::other(format!("cannot set raw mode: {e}")))?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}
