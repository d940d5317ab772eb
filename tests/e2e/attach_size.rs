//! `corral attach` gives the agent the size of the real terminal it runs
//! in, and follows it when that terminal is resized (SIGWINCH). The
//! terminal is a real one: a tmux pane.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use corral_e2e::{corral_bin, TestRepo, PATIENCE};

/// A private tmux server (its own socket and config); killed on drop,
/// even when the test fails.
struct Tmux {
    socket: PathBuf,
    config: PathBuf,
    test_id: String,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .arg("-f")
            .arg(&self.config)
            .arg("-S")
            .arg(&self.socket)
            .env("CORRAL_TEST_ID", &self.test_id)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// What the pane shows (for failure messages).
    fn screen(&self) -> String {
        match self.command().args(["capture-pane", "-p", "-t", "attach"]).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
            Err(e) => format!("(capture-pane failed: {e})"),
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Waits until the agent's log shows `want`, or panics with the log and
/// the pane's screen.
fn wait_for_log(repo: &TestRepo, id: u64, tmux: Option<&Tmux>, want: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = String::from_utf8_lossy(&repo.log_by_id(id)).into_owned();
        if log.contains(want) {
            return;
        }
        if Instant::now() > deadline {
            let screen = tmux.map(Tmux::screen).unwrap_or_default();
            panic!("timed out after {PATIENCE:?} waiting for {want:?} in the log\nlog:\n{log}\npane:\n{screen}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn attach_forwards_terminal_size_and_sigwinch() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed (it gives the test a real terminal)");
        return;
    }
    let repo = TestRepo::new();
    // Says its terminal's size at start and on every SIGWINCH; the short
    // sleeps let the trap run soon after the signal.
    let script = "trap 'echo \"size $(stty size)\"' WINCH; echo \"size $(stty size)\"; \
                  while :; do sleep 0.1; done";
    repo.corral_ok(&["spawn", "sized", "--", "sh", "-c", script]);
    let id = repo.agent("/root/sized")["id"].as_u64().expect("an agent id");

    // Nobody attached: the default size.
    wait_for_log(&repo, id, None, "size 50 160");

    // `corral attach` in a 100x30 tmux pane, with the test's environment.
    let wrapper = repo.path("attach.sh");
    let quote = |p: &std::path::Path| format!("'{}'", p.display());
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport CORRAL_WORKTREE_ROOT={}\nexport CORRAL_TEST_ID='{}'\n\
             unset CORRAL_ADDRESS CORRAL_SOCKET\ncd {} || exit 1\nexec {} attach sized\n",
            quote(&repo.worktrees),
            repo.test_id,
            quote(&repo.repo),
            quote(&corral_bin()),
        ),
    )
    .unwrap();
    // Panes stay after `corral attach` ends, so a failure shows why.
    let config = repo.path("tmux.conf");
    std::fs::write(&config, "set -g remain-on-exit on\n").unwrap();
    let tmux = Tmux { socket: repo.path("tmux.sock"), config, test_id: repo.test_id.clone() };
    let wrapper = format!("sh {}", quote(&wrapper));
    tmux.run(&["new-session", "-d", "-s", "attach", "-x", "100", "-y", "30", &wrapper]);
    let pane = tmux.run(&["display-message", "-p", "-t", "attach", "#{pane_height} #{pane_width}"]);
    assert_eq!(String::from_utf8_lossy(&pane.stdout).trim(), "30 100", "the tmux pane's size");

    wait_for_log(&repo, id, Some(&tmux), "size 30 100");

    // Resizing the terminal resizes the agent's.
    tmux.run(&["resize-window", "-t", "attach", "-x", "120", "-y", "40"]);
    wait_for_log(&repo, id, Some(&tmux), "size 40 120");

    // Ctrl-] detaches; the agent keeps running.
    tmux.run(&["send-keys", "-t", "attach", "C-]"]);
    let deadline = Instant::now() + PATIENCE;
    while !tmux.screen().contains("detached from /root/sized") {
        assert!(Instant::now() < deadline, "attach did not detach; pane:\n{}", tmux.screen());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(repo.agent("/root/sized")["state"], "running");
    repo.corral_ok(&["stop", "sized", "--grace", "0"]);
}
