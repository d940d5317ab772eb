//! `corral top` in a real terminal (a tmux pane, 80x24): it shows the
//! agents with their states, Enter attaches and Ctrl-] comes back, `/`
//! filters, `s` then `y` stops the selected agent (and `ps` agrees), and
//! `q` gives the terminal back as it found it.
//!
//! Also the [`Tmux`] helper that the other terminal tests (person.rs) use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_e2e::{corral_bin, poll_until, TestRepo, PATIENCE};

/// A private tmux server (its own socket, in the test's scratch folder,
/// so nothing is left behind, and its own config) for one test; killed on
/// drop, even when the test fails.
pub(crate) struct Tmux {
    socket: PathBuf,
    config: PathBuf,
    test_id: String,
}

/// The prompt of the shell in the pane.
pub(crate) const PROMPT: &str = "corral-test$ ";

impl Tmux {
    /// A server for `repo`, or `None` (the test says it is skipped) when
    /// tmux is not installed: it gives the test a real terminal.
    pub(crate) fn new(repo: &TestRepo) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("skipped: tmux is not installed (apt-get install -y tmux): it gives the test a real terminal");
            return None;
        }
        let config = repo.path("tmux.conf");
        // No status line: the pane is the whole window. Panes stay after
        // their command ends, so a failure shows why.
        std::fs::write(&config, "set -g status off\nset -g remain-on-exit on\nset -g history-limit 5000\n").unwrap();
        let socket = repo.path("tmux.sock");
        Some(Tmux { socket, config, test_id: repo.test_id.clone() })
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.config)
            .env("CORRAL_TEST_ID", &self.test_id)
            .stdin(Stdio::null());
        command
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Starts session `name`, `width`x`height`, running an interactive
    /// shell with a known prompt and no start-up files.
    pub(crate) fn start_shell(&self, name: &str, width: u16, height: u16) {
        let shell = format!("env PS1='{PROMPT}' TERM=xterm-256color bash --norc --noprofile -i");
        self.run(&["new-session", "-d", "-s", name, "-x", &width.to_string(), "-y", &height.to_string(), &shell]);
        self.wait_for(name, "the shell's prompt", |s| s.contains(PROMPT.trim_end()));
    }

    /// Types `text` into the pane (literally), then Enter.
    pub(crate) fn type_line(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
        self.run(&["send-keys", "-t", name, "Enter"]);
    }

    /// Sends keys by tmux's names (`Enter`, `C-]`, `Escape`) or literally.
    pub(crate) fn keys(&self, name: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", name];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    pub(crate) fn literal(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
    }

    /// What the pane shows now.
    pub(crate) fn screen(&self, name: &str) -> String {
        match self.command().args(["capture-pane", "-p", "-t", name]).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(capture-pane failed: {e})"),
        }
    }

    /// A pane variable (`#{alternate_on}`, `#{cursor_flag}`...).
    pub(crate) fn display(&self, name: &str, format: &str) -> String {
        String::from_utf8_lossy(&self.run(&["display-message", "-p", "-t", name, format]).stdout).trim().to_string()
    }

    /// Waits until the screen satisfies `ok`, or panics with the screen.
    pub(crate) fn wait_for(&self, name: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen(name);
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}; the pane:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A script that runs `corral ARGS` for `repo` with the test's
/// environment (what `TestRepo::command` sets), for typing into a pane.
pub(crate) fn corral_script(repo: &TestRepo, name: &str, args: &str) -> PathBuf {
    let quote = |p: &Path| format!("'{}'", p.display());
    let script = repo.path(name);
    std::fs::write(
        &script,
        format!(
            "export CORRAL_WORKTREE_ROOT={}\nexport CORRAL_TEST_ID='{}'\nunset CORRAL_ADDRESS CORRAL_SOCKET\n\
             cd {} || exit 1\n{} {args}\n",
            quote(&repo.worktrees),
            repo.test_id,
            quote(&repo.repo),
            quote(&corral_bin()),
        ),
    )
    .unwrap();
    script
}

/// The screen's line that shows `address` in the table.
fn row<'s>(screen: &'s str, address: &str) -> Option<&'s str> {
    screen.lines().find(|l| l.trim_start().starts_with(address) && l.contains(' '))
}

fn spawn(repo: &TestRepo, name: &str, script: &str) {
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    repo.corral_json(&["spawn", name, "--task", "top test", "--grace", "1", "--json", "--", bin, "fake-agent", script]);
}

#[test]
fn top_shows_the_agents_attaches_filters_stops_one_and_gives_the_terminal_back() {
    let repo = TestRepo::new();
    let Some(tmux) = Tmux::new(&repo) else { return };
    spawn(&repo, "alpha", "print alpha-is-up; echo-input; hang");
    spawn(&repo, "beta", "print beta-is-up; hang");
    spawn(&repo, "gamma", "print gamma-is-done; exit 0");
    poll_until("gamma to succeed", PATIENCE, || repo.agent("/root/gamma")["state"] == "succeeded");

    tmux.start_shell("top", 80, 24);
    let top = corral_script(&repo, "top.sh", "top");
    tmux.type_line("top", &format!("sh '{}'", top.display()));
    let screen = tmux.wait_for("top", "three agents with their states", |s| {
        row(s, "/root/alpha").is_some_and(|r| r.contains("running"))
            && row(s, "/root/beta").is_some_and(|r| r.contains("running"))
            && row(s, "/root/gamma").is_some_and(|r| r.contains("succeeded"))
    });
    assert!(screen.contains("corral top"), "{screen}");
    assert!(screen.contains("q quit"), "the keys are on the last line:\n{screen}");
    assert_eq!(tmux.display("top", "#{alternate_on}"), "1", "top draws on the alternate screen");
    // The selected agent's pane shows its output.
    tmux.wait_for("top", "alpha's output in the pane", |s| s.contains("alpha-is-up"));

    // `?` lists the keys; any key closes it.
    tmux.keys("top", &["?"]);
    tmux.wait_for("top", "the help", |s| s.contains("stop it and everything below it"));
    tmux.keys("top", &["Escape"]);
    tmux.wait_for("top", "the help to close", |s| !s.contains("stop it and everything below it"));

    // Enter attaches to the selected agent (the first, alpha); Ctrl-] comes back.
    tmux.keys("top", &["Enter"]);
    tmux.wait_for("top", "the attached terminal", |s| s.contains("attached to /root/alpha"));
    tmux.literal("top", "hello-from-top");
    tmux.keys("top", &["Enter"]);
    tmux.wait_for("top", "alpha's answer", |s| s.contains("got hello-from-top"));
    tmux.keys("top", &["C-]"]);
    tmux.wait_for("top", "top again", |s| s.contains("back from /root/alpha") && row(s, "/root/beta").is_some());

    // `/beta` Enter keeps the filter and selects beta; `s` asks, `y` stops it.
    tmux.keys("top", &["/"]);
    tmux.literal("top", "beta");
    tmux.keys("top", &["Enter"]);
    let screen =
        tmux.wait_for("top", "the filter", |s| s.contains("filter \"beta\"") && row(s, "/root/alpha").is_none());
    assert!(row(&screen, "/root/beta").is_some(), "{screen}");
    tmux.keys("top", &["s"]);
    tmux.wait_for("top", "the question", |s| s.contains("Stop /root/beta and every agent below it?"));
    tmux.keys("top", &["y"]);
    poll_until("ps to say beta stopped", PATIENCE, || repo.agent("/root/beta")["state"] == "stopped");
    tmux.wait_for("top", "beta stopped on screen", |s| row(s, "/root/beta").is_some_and(|r| r.contains("stopped")));
    assert_eq!(repo.agent("/root/alpha")["state"], "running", "only the selected agent stops");

    // `q` quits and leaves the terminal as it found it.
    tmux.keys("top", &["q"]);
    tmux.wait_for("top", "the prompt after top", |s| {
        s.lines().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with(PROMPT.trim_end()))
    });
    assert_eq!(tmux.display("top", "#{alternate_on}"), "0", "back on the main screen");
    assert_eq!(tmux.display("top", "#{cursor_flag}"), "1", "the cursor shows");
    let stty = repo.path("stty.txt");
    tmux.type_line("top", &format!("stty -a > '{}'; echo TERMINAL-IS-SANE", stty.display()));
    tmux.wait_for("top", "the shell to run a command", |s| s.lines().any(|l| l.trim() == "TERMINAL-IS-SANE"));
    let modes = std::fs::read_to_string(&stty).unwrap();
    let words: Vec<&str> = modes.split(|c: char| c.is_whitespace() || c == ';').collect();
    for mode in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(words.contains(&mode), "the terminal lost {mode}: {modes}");
        assert!(!words.contains(&format!("-{mode}").as_str()), "the terminal lost {mode}: {modes}");
    }
    repo.corral_ok(&["stop", "--all", "--grace", "0"]);
}

#[test]
fn top_refuses_without_a_terminal() {
    let repo = TestRepo::new();
    let out = repo.corral(&["top"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a terminal"), "{stderr}");
}

/// Regression: a terminal that hung up (the tmux server killed, an SSH
/// connection dropped) left `corral top` spinning for ever at full CPU,
/// since crossterm reads an end of file there in a loop that never ends.
#[test]
fn top_ends_when_its_terminal_hangs_up() {
    let repo = TestRepo::new();
    let Some(tmux) = Tmux::new(&repo) else { return };
    tmux.start_shell("hangup", 80, 24);
    let top = corral_script(&repo, "top.sh", "top");
    tmux.type_line("hangup", &format!("sh '{}'", top.display()));
    tmux.wait_for("hangup", "top", |s| s.contains("corral top"));
    let tops = || {
        repo.processes()
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
                args.len() == 2 && args[0].ends_with(b"corral") && args[1] == b"top"
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(tops().len(), 1, "one corral top runs");
    tmux.run(&["kill-server"]);
    poll_until("corral top to end once its terminal hung up", PATIENCE, || tops().is_empty());
}
