//! The agent's output, from its PTY into `output.log`.
//!
//! Owns: reading the PTY master and writing what it read to the log (the
//! pump), counting what reached the log (`State::log_len`) and
//! what a full disk lost (`State::log_bytes_lost`), and syncing the log
//! when the output ends (`State::output_closed`). Never does: write the
//! monitor's own notes (`super::note`), or read the log back.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Shared;

/// Copies PTY output into the log, byte for byte, and tells waiters.
///
/// One thread reads the PTY and writes what it read. A read that leaves
/// nothing more in the PTY is written at once, so a line after a quiet
/// spell reaches the log with nothing after it. While the PTY holds more
/// after a read (a read gives at most the line discipline's 4 KiB), the
/// pump reads on and writes what it gathered once the PTY is empty or
/// [`WRITE_BATCH`] bytes wait: in a flood of `cat`, one write for every
/// two or three reads.
///
/// A flood through a PTY is a relay: the agent, the kernel's tty worker
/// and the pump take turns, 4 KiB at a time, so whatever delays the
/// pump's turn or takes a core from the other two slows the agent. A
/// writer thread fed by the pump (an earlier design) was slower on two
/// cores than this: 2.75 s against 2.53 s median for 210 MB, slower in
/// each of 8 interleaved rounds. Its wake-ups took the cores the relay
/// runs on.
pub(super) fn spawn_output_pump(pty: File, log: File, shared: Arc<Shared>, dir: PathBuf) {
    std::thread::spawn(move || pump(pty, OutputLog::new(log, &dir), &shared));
}

/// The pump's read buffer: a PTY read gives at most a few KiB (4 KiB
/// from its line discipline, sometimes a little more), and every byte
/// of it counts in each idle monitor's memory.
///
/// The "little more" has a price: with room left after the line
/// discipline's 4 KiB, `read` waits for the kernel's tty worker to hand
/// over more. In a relay that writes nothing, reads of 4 KiB were faster
/// (1.7 s against 2.2 s for 210 MB); with the log written, as here, they
/// made no difference (faster in 7 of 14 interleaved rounds, medians
/// 2.60 s against 2.63 s), so the buffer stays as it is.
const READ_SIZE: usize = 16 * 1024;
/// What the pump gathers in a flood before it writes.
const WRITE_BATCH: usize = 64 * 1024;

fn pump(mut pty: File, mut log: OutputLog, shared: &Shared) {
    let mut buf = vec![0u8; READ_SIZE];
    // Only a flood has a batch: an idle monitor keeps just `buf`.
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let n = match pty.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // EIO: every holder of the PTY's other side is gone.
        };
        let more = unread(&pty);
        if batch.is_empty() && !more {
            tell(shared, log.write(&buf[..n]));
            continue;
        }
        if batch.capacity() == 0 {
            batch.reserve_exact(WRITE_BATCH + READ_SIZE);
        }
        batch.extend_from_slice(&buf[..n]);
        if !more {
            // The flood is over (or paused): its buffer goes with it.
            tell(shared, log.write(&std::mem::take(&mut batch)));
        } else if batch.len() >= WRITE_BATCH {
            tell(shared, log.write(&batch));
            batch.clear();
        }
    }
    if !batch.is_empty() {
        tell(shared, log.write(&batch));
    }
    log.finish();
    shared.state.lock().unwrap().output_closed = true;
    shared.changed.notify_all();
}

/// Whether the PTY (or pipe) holds bytes not yet read: `FIONREAD` counts
/// what its line discipline has ready (not what the kernel's tty worker
/// is still handing over). An error counts as nothing, so what was read
/// is written at once.
fn unread(pty: &File) -> bool {
    use std::os::fd::AsRawFd;
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at
    // `count`; the descriptor is open for the call.
    let done = unsafe { libc::ioctl(pty.as_raw_fd(), libc::FIONREAD, &mut count) };
    done == 0 && count > 0
}

/// Counts what reached the log (and what a full disk lost), and wakes the
/// threads waiting for output.
pub(super) fn tell(shared: &Shared, (kept, lost): (u64, u64)) {
    let mut state = shared.state.lock().unwrap();
    state.log_len += kept;
    state.log_bytes_lost += lost;
    if state.output_waiters > 0 {
        shared.changed.notify_all();
    }
}

/// The agent's output log, on a disk that may fill up. What cannot be
/// written is counted, never retried from memory (an agent flooding a
/// full disk would grow the monitor without bound); once writes go
/// through again, a line in the log says how many bytes are missing.
///
/// The log is synced when the agent's output ends, before its exit is
/// told. So that a flood's sync does not hold the exit up, the disk is
/// asked to start writing every [`WRITE_OUT_EVERY`] bytes as they come
/// (without waiting for it): at the end only the last piece is left.
struct OutputLog {
    file: File,
    /// Bytes lost since the last write that went through, and why.
    gap: Option<(u64, std::io::Error)>,
    /// `log.fault` beside the log, when tests inject faults.
    fault_file: Option<PathBuf>,
    /// Bytes written since the disk was last asked to write them out.
    unwritten: u64,
}

/// How much output gathers before the disk is asked to write it out.
const WRITE_OUT_EVERY: u64 = 8 << 20;

impl OutputLog {
    fn new(file: File, dir: &Path) -> OutputLog {
        let fault_file = std::env::var_os("CORRAL_FAULT_INJECTION").map(|_| dir.join("log.fault"));
        OutputLog { file, gap: None, fault_file, unwritten: 0 }
    }

    /// Starts the disk writing what is written so far (`sync_file_range`
    /// with only `SYNC_FILE_RANGE_WRITE`: pages already on their way are
    /// left, nothing is waited for).
    fn write_out(&mut self) {
        use std::os::fd::AsRawFd;
        self.unwritten = 0;
        // SAFETY: sync_file_range reads only its integer arguments; the
        // descriptor is the log's own, open for the call.
        unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }

    /// Writes `bytes`; returns how many reached the log (the note of a
    /// gap included) and how many were lost.
    fn write(&mut self, bytes: &[u8]) -> (u64, u64) {
        let mut kept = 0;
        if let Some((lost, err)) = self.gap.as_ref().map(|(lost, err)| (*lost, err.to_string())) {
            let note = format!("\r\n[corral: {lost} bytes of output were lost here: {err}]\r\n");
            match self.write_some(note.as_bytes()) {
                Ok(()) => {
                    tracing::info!("the output log can be written again; {lost} bytes were lost");
                    kept += note.len() as u64;
                    self.gap = None;
                }
                Err(_) => return (0, self.lose(bytes.len() as u64, None)),
            }
        }
        match self.write_some(bytes) {
            Ok(()) => {
                self.unwritten += bytes.len() as u64;
                if self.unwritten >= WRITE_OUT_EVERY {
                    self.write_out();
                }
                (kept + bytes.len() as u64, 0)
            }
            Err((written, err)) => (kept + written, self.lose(bytes.len() as u64 - written, Some(err))),
        }
    }

    fn lose(&mut self, bytes: u64, err: Option<std::io::Error>) -> u64 {
        match (&mut self.gap, err) {
            (Some((lost, _)), _) => *lost += bytes,
            (None, Some(err)) => {
                tracing::warn!("cannot write the output log ({err}); the agent runs on, its output is counted as lost");
                self.gap = Some((bytes, err));
            }
            (None, None) => {}
        }
        bytes
    }

    /// `write_all`, saying how far it got when it failed.
    fn write_some(&mut self, mut bytes: &[u8]) -> Result<(), (u64, std::io::Error)> {
        let total = bytes.len() as u64;
        if let Some(err) = self.injected_fault() {
            return Err((0, err));
        }
        while !bytes.is_empty() {
            match self.file.write(bytes) {
                Ok(0) => return Err((total - bytes.len() as u64, std::io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err((total - bytes.len() as u64, e)),
            }
        }
        Ok(())
    }

    /// With `CORRAL_FAULT_INJECTION` set, a file `log.fault` in the agent's
    /// folder makes every write fail with ENOSPC until it is removed.
    fn injected_fault(&self) -> Option<std::io::Error> {
        let path = self.fault_file.as_ref()?;
        path.exists().then(|| std::io::Error::from_raw_os_error(libc::ENOSPC))
    }

    fn finish(&mut self) {
        let _ = self.file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A pipe standing in for the PTY: (what the pump reads, what the agent writes).
    fn pipe() -> (File, File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (File::from(read), File::from(write))
    }

    fn pumped(dir: &tempfile::TempDir) -> (Arc<Shared>, File, PathBuf) {
        let path = dir.path().join("output.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let shared = Arc::new(Shared::new(0, 24, 80));
        let (read, write) = pipe();
        spawn_output_pump(read, log, shared.clone(), dir.path().to_path_buf());
        (shared, write, path)
    }

    fn wait_until(what: &str, shared: &Shared, mut done: impl FnMut(&super::super::State) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut state = shared.state.lock().unwrap();
        while !done(&state) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            state = shared.changed.wait_timeout(state, Duration::from_millis(20)).unwrap().0;
        }
    }

    #[test]
    fn a_flood_reaches_the_log_whole_in_order_and_counted_before_the_output_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut agent, path) = pumped(&dir);
        // 24 MB in writes of every size from 1 byte to 20 KiB, each byte
        // saying where it is, so a lost, doubled or swapped piece shows.
        let flood: Vec<u8> = (0..24_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let flood = flood.clone();
            std::thread::spawn(move || {
                let mut at = 0;
                let mut size = 1;
                while at < flood.len() {
                    let end = (at + size).min(flood.len());
                    agent.write_all(&flood[at..end]).unwrap();
                    at = end;
                    size = size * 7 % 20_480 + 1;
                }
            })
        };
        writer.join().unwrap();
        wait_until("the output to close", &shared, |s| s.output_closed);
        assert_eq!(shared.state.lock().unwrap().log_len, flood.len() as u64);
        assert_eq!(shared.state.lock().unwrap().log_bytes_lost, 0);
        assert!(std::fs::read(&path).unwrap() == flood, "the log differs from what was written");
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_with_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, mut agent, path) = pumped(&dir);
        // Each line alone, the agent's side kept open: none waits for a
        // batch to fill, or for more output, to reach the log.
        let mut expected = Vec::new();
        for line in ["first line\r\n", "x", "a third, after a flood's worth of nothing\r\n"] {
            agent.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
            let len = expected.len() as u64;
            wait_until("the line in the log", &shared, |s| s.log_len == len);
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        }
        assert!(!shared.state.lock().unwrap().output_closed, "the output closed with the agent's side open");
        drop(agent);
        wait_until("the output to close", &shared, |s| s.output_closed);
    }
}
