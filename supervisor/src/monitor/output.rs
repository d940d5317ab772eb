//! The agent's output, from its PTY into `output.log`.
//!
//! Owns: reading the PTY master (the pump), writing what it read to the log
//! (the writer), counting what reached the log (`State::log_len`) and
//! what a full disk lost (`State::log_bytes_lost`), and syncing the log
//! when the output ends (`State::output_closed`). Never does: write the
//! monitor's own notes (`super::note`), or read the log back.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Shared;

/// Copies PTY output into the log, byte for byte, and tells waiters.
///
/// Two threads: the pump reads the PTY and hands what it read to the
/// writer, which writes it to the log and counts it. The PTY is read
/// again at once, while the log is written: with the write on the pump's
/// thread, every 4 KiB read waited for its write (a fifth of the pump's
/// time in a flood), and the agent with it. The writer writes what
/// came in as soon as it comes after a quiet spell, and in a flood at
/// most once every [`WRITE_EVERY`] or [`WRITE_BATCH`] bytes, so it wakes
/// about once a batch, not once a read. At most [`PENDING_MAX`] bytes
/// wait for it; past that the pump waits, as it waited for each write
/// before.
pub(super) fn spawn_output_pump(mut reader: Box<dyn Read + Send>, log: File, shared: Arc<Shared>, dir: PathBuf) {
    let handoff = Arc::new(Handoff::default());
    let to_writer = handoff.clone();
    std::thread::spawn(move || write_output(&to_writer, OutputLog::new(log, &dir), &shared));
    std::thread::spawn(move || {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => handoff.put(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // EIO: every holder of the PTY's other side is gone.
            }
        }
        handoff.pending.lock().unwrap().ended = true;
        handoff.ready.notify_one();
    });
}

/// The pump's read buffer: a PTY read gives at most a few KiB (4 KiB
/// from its line discipline, sometimes a little more), and every byte
/// of it counts in each idle monitor's memory.
const READ_SIZE: usize = 16 * 1024;
/// In a flood, the shortest time between two writes of the log.
const WRITE_EVERY: Duration = Duration::from_millis(1);
/// What the writer writes at once in a flood, however soon.
const WRITE_BATCH: usize = 64 * 1024;
/// The most output read and not yet written.
const PENDING_MAX: usize = 2 * WRITE_BATCH;
/// How long after a flood its buffers are let go.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Output on its way from the pump to the writer.
#[derive(Default)]
struct Handoff {
    pending: Mutex<Pending>,
    /// The writer waits here for output.
    ready: Condvar,
    /// The pump waits here for room.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The pump has read the last of the PTY.
    ended: bool,
    /// The writer waits with nothing to write: the first bytes wake it.
    writer_idle: bool,
}

impl Handoff {
    /// The pump's side: adds `bytes` (waiting for room), waking the writer
    /// for the first bytes after it went idle and for a full batch.
    fn put(&self, bytes: &[u8]) {
        let mut pending = self.room.wait_while(self.pending.lock().unwrap(), |p| p.bytes.len() >= PENDING_MAX).unwrap();
        let before = pending.bytes.len();
        pending.bytes.extend_from_slice(bytes);
        let after = pending.bytes.len();
        if (before == 0 && pending.writer_idle) || (before < WRITE_BATCH && after >= WRITE_BATCH) {
            self.ready.notify_one();
        }
    }
}

/// The writer's side: writes what the pump hands over until the pump has
/// ended and everything is written; then syncs the log and says so.
fn write_output(handoff: &Handoff, mut log: OutputLog, shared: &Shared) {
    let mut bytes = Vec::new();
    let mut last_write = Instant::now() - WRITE_EVERY;
    loop {
        let ended = {
            let mut pending = handoff.pending.lock().unwrap();
            loop {
                if pending.ended || pending.bytes.len() >= WRITE_BATCH {
                    break;
                }
                if pending.bytes.is_empty() {
                    pending.writer_idle = true;
                    if pending.bytes.capacity().max(bytes.capacity()) > READ_SIZE {
                        // A flood's buffers go once it has been over for
                        // a while (not at each pause within it): an idle
                        // monitor keeps what a quiet agent needs.
                        let (guard, waited) = handoff.ready.wait_timeout(pending, RELEASE_AFTER).unwrap();
                        pending = guard;
                        if waited.timed_out() && pending.bytes.is_empty() {
                            pending.bytes = Vec::new();
                            bytes = Vec::new();
                        }
                    } else {
                        pending = handoff.ready.wait(pending).unwrap();
                    }
                    pending.writer_idle = false;
                    continue;
                }
                match WRITE_EVERY.checked_sub(last_write.elapsed()) {
                    Some(left) if !left.is_zero() => pending = handoff.ready.wait_timeout(pending, left).unwrap().0,
                    _ => break,
                }
            }
            std::mem::swap(&mut pending.bytes, &mut bytes);
            handoff.room.notify_one();
            pending.ended
        };
        if !bytes.is_empty() {
            // The PTY is always read, whatever the log can take: an agent
            // never blocks on a full disk.
            let (kept, lost) = log.write(&bytes);
            bytes.clear();
            last_write = Instant::now();
            let mut state = shared.state.lock().unwrap();
            state.log_len += kept;
            state.log_bytes_lost += lost;
            if state.output_waiters > 0 {
                shared.changed.notify_all();
            }
        }
        if ended {
            break;
        }
    }
    log.finish();
    shared.state.lock().unwrap().output_closed = true;
    shared.changed.notify_all();
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
        spawn_output_pump(Box::new(read), log, shared.clone(), dir.path().to_path_buf());
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
