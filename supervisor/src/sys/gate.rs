//! Gates: the command that must pass before a branch merges, run as a
//! process in a folder with a time limit.
//!
//! Owns: the [`Gate`] type, in every spelling it is read in (a string or
//! an array in `corral.toml`, the tagged form in the journal), and running
//! one ([`run_gate`]): its own process group, output kept to the last
//! [`GATE_OUTPUT_MAX`] bytes, the whole group killed when it ends or runs
//! out of time. Knows nothing of git: the daemon decides when a gate runs
//! and what its result means for a merge.

use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A gate: the command that must pass before a branch merges.
///
/// Written (to the journal, in an agent's merge settings) externally
/// tagged: `{"shell":"cargo test"}`, `{"argv":["cargo","test"]}`. Read in
/// that form as written, and as a person spells it in `corral.toml`: a
/// string (`gate = "cargo test"`, not blank) or an array of strings
/// (`gate = ["cargo", "test"]`, with a program first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Run with `sh -c`.
    Shell(String),
    /// Run directly: the program and its arguments.
    Argv(Vec<String>),
}

impl Gate {
    /// The argv to run: `["sh", "-c", text]` or the argv itself.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Gate::Shell(text) => vec!["sh".to_owned(), "-c".to_owned(), text.clone()],
            Gate::Argv(argv) => argv.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Gate, D::Error> {
        /// The tagged form, exactly as [`Gate`] writes it.
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Tagged {
            Shell(String),
            Argv(Vec<String>),
        }

        struct GateVisitor;

        impl<'de> Visitor<'de> for GateVisitor {
            type Value = Gate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a string (run with sh -c) or an array of strings (an argv)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Gate, E> {
                if text.trim().is_empty() {
                    return Err(E::custom("the command is empty"));
                }
                Ok(Gate::Shell(text.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Gate, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                match argv.first() {
                    None => Err(de::Error::custom("the command is empty: give at least the program")),
                    Some(program) if program.is_empty() => {
                        Err(de::Error::custom("the program (first element) must not be empty"))
                    }
                    Some(_) => Ok(Gate::Argv(argv)),
                }
            }

            /// The journal's form, taken as written: a journal always reads
            /// back, and a gate that cannot run fails when it runs.
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Gate, A::Error> {
                Ok(match Tagged::deserialize(de::value::MapAccessDeserializer::new(map))? {
                    Tagged::Shell(text) => Gate::Shell(text),
                    Tagged::Argv(argv) => Gate::Argv(argv),
                })
            }
        }

        deserializer.deserialize_any(GateVisitor)
    }
}

/// How a gate ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateResult {
    /// Exited 0 in time.
    pub passed: bool,
    /// The exit code; `None` when killed by a signal or never started.
    pub code: Option<i32>,
    /// It ran out of time and was killed.
    pub timed_out: bool,
    /// The last [`GATE_OUTPUT_MAX`] bytes of stdout and stderr, interleaved
    /// as written, with a first line saying how much was cut.
    pub output: String,
}

/// How much of a gate's output [`GateResult`] keeps.
pub const GATE_OUTPUT_MAX: usize = 16 * 1024;

/// The tail of a stream: the last `GATE_OUTPUT_MAX` bytes and how many
/// came before them.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: u64,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > GATE_OUTPUT_MAX {
            let extra = self.bytes.len() - GATE_OUTPUT_MAX;
            self.bytes.drain(..extra);
            self.cut += extra as u64;
        }
    }

    fn text(&self) -> String {
        let mut start = 0;
        if self.cut > 0 {
            // Do not start inside a UTF-8 sequence.
            while start < self.bytes.len() && start < 4 && (self.bytes[start] & 0xC0) == 0x80 {
                start += 1;
            }
        }
        let body = String::from_utf8_lossy(&self.bytes[start..]);
        if self.cut > 0 {
            format!("[corral: {} earlier bytes of output cut]\n{body}", self.cut + start as u64)
        } else {
            body.into_owned()
        }
    }
}

/// The environment variable that marks a gate's processes: its value is
/// the state folder of the daemon that runs it.
pub const GATE_MARK: &str = "CORRAL_GATE";

/// Runs `gate` in `worktree`, in its own process group, stdin from
/// /dev/null, stdout and stderr captured together; with `env`, in that
/// environment alone (the agent's own), else in this process's. After `timeout` the
/// whole group is killed (SIGKILL). When the gate's main process ends,
/// whatever it left running in its group is killed too. Never fails: a
/// gate that cannot start did not pass, and says why in `output`. Every
/// process of it carries [`GATE_MARK`]` = mark` in its environment, so that
/// a daemon started after one killed mid-gate finds and kills what is left.
pub fn run_gate(
    worktree: &Path,
    gate: &Gate,
    env: Option<&std::collections::BTreeMap<String, String>>,
    timeout: Duration,
    mark: &str,
) -> GateResult {
    let failed = |output: String| GateResult { passed: false, code: None, timed_out: false, output };
    let mut command = match gate {
        Gate::Shell(script) => {
            let mut command = Command::new("sh");
            command.arg("-c").arg(script);
            command
        }
        Gate::Argv(argv) => match argv.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
            None => return failed("corral: the gate command is empty".to_string()),
        },
    };
    // Close-on-exec, so agents spawned meanwhile do not inherit the write
    // end and keep the pipe open; the child gets it as its stdout/stderr.
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return failed(format!("corral: cannot make a pipe for the gate: {e}")),
    };
    let write_copy = match write_end.try_clone() {
        Ok(fd) => fd,
        Err(e) => return failed(format!("corral: cannot make a pipe for the gate: {e}")),
    };
    if let Some(env) = env {
        command.env_clear().envs(env);
    }
    command.env(GATE_MARK, mark);
    command
        .current_dir(worktree)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_copy))
        .process_group(0);
    let spawned = command.spawn();
    // The command holds our copies of the write end: drop it, or the
    // reader never sees the end of the output.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return failed(format!("corral: cannot start the gate {gate:?} in {}: {e}", worktree.display())),
    };
    let pid = child.id();

    let tail = Arc::new(Mutex::new(Tail::default()));
    let (read_done_tx, read_done) = mpsc::channel::<()>();
    {
        let tail = Arc::clone(&tail);
        let mut reader = std::fs::File::from(read_end);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => tail.lock().unwrap_or_else(|e| e.into_inner()).push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = read_done_tx.send(());
        });
    }
    // Wait for the exit without reaping (WNOWAIT): while the main process
    // is a zombie its pid, and so the group id, cannot be reused, and
    // killing the group cannot hit a stranger.
    let (exited_tx, exited) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let child = nix::unistd::Pid::from_raw(pid as i32);
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {}
        let _ = exited_tx.send(());
    });
    let timed_out = exited.recv_timeout(timeout).is_err();
    if timed_out {
        crate::sys::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = exited.recv();
    }
    crate::sys::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().ok();
    // A process that left the group (setsid) may hold the pipe open: wait
    // a little for the rest of the output, not for ever.
    let _ = read_done.recv_timeout(Duration::from_secs(2));
    let mut output = tail.lock().unwrap_or_else(|e| e.into_inner()).text();
    if timed_out {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&format!("[corral: the gate ran out of time after {timeout:?} and was killed]\n"));
    }
    let code = status.and_then(|s| s.code());
    GateResult { passed: !timed_out && code == Some(0), code, timed_out, output }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_runs_in_the_environment_it_is_given_alone() {
        let dir = tempfile::tempdir().unwrap();
        let env = std::collections::BTreeMap::from([
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("GATE_SETTING".to_string(), "from the agent".to_string()),
        ]);
        let gate = Gate::Shell("echo \"$GATE_SETTING|${HOME-unset}\"".into());
        let result = run_gate(dir.path(), &gate, Some(&env), Duration::from_secs(30), "test");
        assert!(result.passed, "{result:?}");
        assert_eq!(result.output, "from the agent|unset\n");
    }

    #[test]
    fn gate_tail_keeps_the_end_and_says_what_was_cut() {
        let mut tail = Tail::default();
        tail.push(b"start\n");
        assert_eq!(tail.text(), "start\n");
        for i in 0..5000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.starts_with("[corral: "), "{}", &text[..40]);
        assert!(text.ends_with("line 4999\n"));
        assert!(!text.contains("start"));
        assert!(text.len() <= GATE_OUTPUT_MAX + 64);
    }

    #[test]
    fn gate_tail_does_not_start_inside_a_character() {
        let mut tail = Tail::default();
        // One byte, then two-byte characters: the cut falls inside one.
        tail.push(b"a");
        tail.push("é".repeat(GATE_OUTPUT_MAX).as_bytes());
        assert_eq!(tail.cut % 2, 1);
        let text = tail.text();
        let body = text.split_once('\n').unwrap().1;
        assert!(!body.contains('\u{FFFD}'), "a cut character shows as a replacement");
    }

    #[test]
    fn gate_is_written_tagged_and_read_in_every_spelling() {
        let shell = Gate::Shell("cargo test".into());
        let argv = Gate::Argv(vec!["cargo".into(), "test".into()]);
        assert_eq!(serde_json::to_string(&shell).unwrap(), r#"{"shell":"cargo test"}"#);
        assert_eq!(serde_json::to_string(&argv).unwrap(), r#"{"argv":["cargo","test"]}"#);
        for gate in [&shell, &argv] {
            let json = serde_json::to_string(gate).unwrap();
            assert_eq!(&serde_json::from_str::<Gate>(&json).unwrap(), gate, "{json}");
        }
        assert_eq!(serde_json::from_str::<Gate>(r#""cargo test""#).unwrap(), shell);
        assert_eq!(serde_json::from_str::<Gate>(r#"["cargo","test"]"#).unwrap(), argv);
        // An old journal's gate reads as written, even one that cannot run.
        assert_eq!(serde_json::from_str::<Gate>(r#"{"shell":""}"#).unwrap(), Gate::Shell(String::new()));
        assert_eq!(serde_json::from_str::<Gate>(r#"{"argv":[]}"#).unwrap(), Gate::Argv(vec![]));
    }

    #[test]
    fn gate_reads_from_toml_in_every_spelling() {
        #[derive(Deserialize)]
        struct Merge {
            gate: Gate,
        }
        let gate = |text: &str| toml::from_str::<Merge>(text).map(|m| m.gate);
        assert_eq!(gate("gate = \"cargo test\"").unwrap(), Gate::Shell("cargo test".into()));
        assert_eq!(gate("gate = [\"cargo\", \"test\"]").unwrap(), Gate::Argv(vec!["cargo".into(), "test".into()]));
        assert_eq!(gate("gate = { shell = \"make\" }").unwrap(), Gate::Shell("make".into()));
        assert!(gate("gate = []").unwrap_err().to_string().contains("give at least the program"));
    }

    #[test]
    fn gate_spellings_a_person_writes_are_checked() {
        let err = |json: &str| serde_json::from_str::<Gate>(json).unwrap_err().to_string();
        assert!(err(r#""  ""#).contains("the command is empty"));
        assert!(err("[]").contains("give at least the program"));
        assert!(err(r#"["", "x"]"#).contains("must not be empty"));
        assert!(err("3").contains("a string (run with sh -c) or an array of strings"));
        assert!(err(r#"{"script":"x"}"#).contains("unknown variant"));
    }
}
