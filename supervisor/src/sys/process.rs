//! Processes: is one alive, what descends from one, and signals.
//!
//! Only this module sends signals to agents and reads `/proc`. A zombie
//! counts as dead here: on machines whose init does not reap orphans, an
//! ended process can linger as a zombie for ever, and `kill(pid, 0)` would
//! call it alive.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// True when `pid` exists and is neither a zombie nor dead.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z') | Some('X') | None),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line (after the `(comm)` field,
/// which may itself contain spaces and parentheses).
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn stat_ppid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The parent of `pid`, if it lives.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_ppid(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).filter(|ppid| *ppid != 0)
}

/// Every live process below `root` (not `root` itself), found by following
/// parent links through `/proc`. Catches descendants that left the
/// process group or session with `setsid`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if matches!(stat_state(&stat), Some('Z') | Some('X')) {
            continue;
        }
        if let Some(ppid) = stat_ppid(&stat) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                found.push(kid);
                queue.push(kid);
            }
        }
    }
    found
}

/// Whether `pid` is stopped by a signal (state `T`; `t` is a tracer's
/// stop). A process that is gone counts as stopped: nothing of it runs.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_none_or(|stat| stat_state(&stat) == Some('T'))
}

/// Sends `signal` to the process group `pgid`; a group already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(-(pgid as i32)), signal);
}

/// Sends `signal` to one process; one already gone is fine.
pub fn signal_pid(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), signal);
}

/// Stops a process tree: SIGTERM to the group `pgid` and to every
/// descendant of `root`, up to `grace` for them to go, then SIGKILL to the
/// group and to every descendant until none is left. `root` itself (the
/// caller, a monitor) is not signalled. Returns when no descendant of
/// `root` is alive, or after `give_up` (a process stuck in the kernel).
pub fn stop_tree(root: u32, pgid: Option<u32>, grace: Duration, give_up: Duration) -> bool {
    let start = Instant::now();
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::SIGTERM);
    }
    for pid in descendants(root) {
        signal_pid(pid, Signal::SIGTERM);
    }
    // A stopped process (a paused agent, a Ctrl-Z) takes its SIGTERM only
    // once it runs again: wake them all, so the grace means something.
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::SIGCONT);
    }
    for pid in descendants(root) {
        signal_pid(pid, Signal::SIGCONT);
    }
    let grace_end = start + grace;
    while Instant::now() < grace_end {
        if descendants(root).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    loop {
        if let Some(pgid) = pgid {
            signal_group(pgid, Signal::SIGKILL);
        }
        let left = descendants(root);
        if left.is_empty() {
            return true;
        }
        for pid in left {
            signal_pid(pid, Signal::SIGKILL);
        }
        if start.elapsed() > grace + give_up {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Makes the calling process the reaper of its orphaned descendants, so a
/// grandchild that calls `setsid` and loses its parent still counts as ours.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The processes whose environment holds `name=value` exactly (of those
/// this user may read), this one aside.
pub fn with_env(name: &str, value: &str) -> Vec<u32> {
    let wanted = format!("{name}={value}").into_bytes();
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|entry| entry == wanted.as_slice()))
        })
        .collect()
}

/// SIGKILLs every process whose environment holds `name=value`, and waits
/// (up to `give_up`) until none is left; returns how many there were.
pub fn kill_with_env(name: &str, value: &str, give_up: Duration) -> usize {
    let found = with_env(name, value);
    for pid in &found {
        signal_pid(*pid, Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + give_up;
    while !with_env(name, value).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    found.len()
}

/// For `pre_exec`: the child leads a session of its own, so no signal
/// meant for the terminal or the process that started it reaches it (the
/// daemon, each monitor), and it keeps none of the descriptors it was
/// handed beyond its standard three. A daemon that outlives its client
/// must not hold what the client's caller opened: a cron wrapper's
/// `flock` (every later run would find the lock taken), or the write end
/// of a pipe (`(corral ps 7>&1) | cat` would never see its end).
/// Async-signal-safe: it calls setsid, close_range and fcntl only.
pub fn new_session() -> std::io::Result<()> {
    nix::unistd::setsid().map_err(std::io::Error::from)?;
    close_on_exec_from(3);
    Ok(())
}

/// Marks every descriptor from `first` on close-on-exec (what the child
/// runs then opens nothing it did not open itself). Async-signal-safe.
fn close_on_exec_from(first: libc::c_int) {
    // SAFETY: close_range takes integers only and changes only the flags
    // of this process's descriptors.
    let done = unsafe {
        libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
    };
    if done == 0 {
        return;
    }
    // A kernel before 5.11: each descriptor up to the limit, one by one.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `limit`, which it points at.
    let last = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur.min(65_536) as libc::c_int,
        _ => 4096,
    };
    for fd in first..last {
        // SAFETY: F_GETFD/F_SETFD on a descriptor that may not exist
        // (EBADF, ignored) touch only its flags.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "42 (a) b (c)) S 7 42 42 0 -1";
        assert_eq!(stat_state(stat), Some('S'));
        assert_eq!(stat_ppid(stat), Some(7));
    }

    #[test]
    fn finds_and_stops_children() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id();
        assert!(descendants(me).contains(&child.id()));
        assert!(alive(child.id()));
        // Our own test process is not signalled; only the child is.
        signal_pid(child.id(), Signal::SIGKILL);
        child.wait().unwrap();
        assert!(!alive(child.id()));
    }
}
