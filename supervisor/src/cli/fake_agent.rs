//! The scripted fake agent: `corral fake-agent "STEP; STEP; ..."`.
//!
//! It does on demand what real agent CLIs cannot be made to do: crash,
//! hang, ignore SIGTERM, fork a grandchild that calls `setsid`, flood its
//! output, print garbage; and the ordinary things an agent does (print
//! progress, write files, commit). The demo runs it, and so do the tests.
//!
//! Steps (words may be quoted with `"` or `'`):
//!
//! | step | does |
//! |---|---|
//! | `print TEXT...` | prints the text |
//! | `progress N [RATE]` | prints `progress i/N` N times, RATE a second (default 10) |
//! | `stamp N [RATE]` | prints `stamp i NANOS` N times, RATE a second on a fixed schedule (default 10); NANOS is the wall-clock time of the write, in nanoseconds since the Unix epoch (the event-latency bench reads it) |
//! | `sleep SECS` | sleeps (fractions allowed) |
//! | `hang` | sleeps for ever |
//! | `exit CODE` | exits with CODE (the script's end exits 0) |
//! | `ignore-sigterm` | ignores SIGTERM from here on |
//! | `grandchild [PIDFILE]` | forks a child that forks a grandchild which calls `setsid`, ignores SIGTERM and sleeps for ever; the child exits, so the grandchild is orphaned; prints `grandchild PID` and writes PID to PIDFILE |
//! | `flood BYTES` | prints BYTES of text as fast as it can |
//! | `garbage` | prints binary bytes, invalid UTF-8, a 1 MB line, and half a JSON object |
//! | `write PATH TEXT...` | writes the text (and a newline) to PATH, making folders |
//! | `commit MESSAGE...` | `git add -A` and `git commit` in the current folder |
//! | `pwd` | prints `pwd DIR` |
//! | `tty` | prints `isatty true` or `isatty false` for stdin and stdout |
//! | `env NAME` | prints `NAME=value` |
//! | `wait-file PATH` | waits until PATH exists (tests use it to hold an agent at a known point) |
//! | `echo-input [N]` | reads N lines (default: until end of input) and prints `got LINE` for each |
//! | `try-write PATH` | tries to create or overwrite PATH; prints `try-write PATH ok` or `try-write PATH errno N (...)`, and goes on either way |
//! | `run PROGRAM ARGS...` | runs a command; prints `run PROGRAM ARGS: exit CODE: OUTPUT` (its stdout and stderr lines joined with ` \| `), and goes on either way |
//! | `connect PORT` | a TCP connect to 127.0.0.1:PORT; prints `connect PORT ok` or `connect PORT errno N (...)` |
//! | `alloc MB` | allocates and touches MB mebibytes, one at a time, and keeps them; prints `alloc MB ok` (an allocation that fails aborts, as in any Rust program) |
//! | `fds N` | opens `/dev/null` N times and keeps the files; prints `fds opened K` |
//! | `forks N` | starts N children that sleep; prints `forks started K`, then ends them |

use std::io::{BufRead, Write};
use std::time::Duration;

/// Runs a script; returns the exit code.
pub fn run(script: &str) -> i32 {
    let steps = match parse(script) {
        Ok(steps) => steps,
        Err(err) => {
            eprintln!("fake-agent: {err}");
            return 2;
        }
    };
    for step in steps {
        if let Some(code) = step_run(&step) {
            return code;
        }
    }
    0
}

/// Splits a script into steps, each a list of words.
pub fn parse(script: &str) -> Result<Vec<Vec<String>>, String> {
    let mut steps = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in script.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ';') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if !words.is_empty() {
                    steps.push(std::mem::take(&mut words));
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in {script:?}"));
    }
    if in_word {
        words.push(word);
    }
    if !words.is_empty() {
        steps.push(words);
    }
    for step in &steps {
        let known = [
            "print",
            "progress",
            "stamp",
            "sleep",
            "hang",
            "exit",
            "ignore-sigterm",
            "grandchild",
            "flood",
            "garbage",
            "write",
            "commit",
            "pwd",
            "tty",
            "env",
            "echo-input",
            "wait-file",
            "try-write",
            "run",
            "connect",
            "alloc",
            "fds",
            "forks",
        ];
        if !known.contains(&step[0].as_str()) {
            return Err(format!("unknown step {:?} (known: {})", step[0], known.join(", ")));
        }
    }
    Ok(steps)
}

fn number<T: std::str::FromStr>(step: &[String], index: usize, default: Option<T>) -> T {
    match step.get(index) {
        Some(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("fake-agent: {:?}: {text:?} is not a number", step[0]);
            std::process::exit(2)
        }),
        None => default.unwrap_or_else(|| {
            eprintln!("fake-agent: {:?} needs a number", step[0]);
            std::process::exit(2)
        }),
    }
}

fn step_run(step: &[String]) -> Option<i32> {
    let mut out = std::io::stdout().lock();
    let rest = step[1..].join(" ");
    match step[0].as_str() {
        "print" => {
            let _ = writeln!(out, "{rest}");
        }
        "progress" => {
            let total: u64 = number(step, 1, None);
            let rate: f64 = number(step, 2, Some(10.0));
            for i in 1..=total {
                let _ = writeln!(out, "progress {i}/{total}");
                let _ = out.flush();
                if i < total && rate > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(1.0 / rate));
                }
            }
        }
        "stamp" => {
            let total: u64 = number(step, 1, None);
            let rate: f64 = number(step, 2, Some(10.0));
            let start = std::time::Instant::now();
            for i in 1..=total {
                // A fixed schedule, so a slow write does not slow the rate.
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64((i - 1) as f64 / rate);
                    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                }
                let nanos =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                let _ = writeln!(out, "stamp {i} {nanos}");
                let _ = out.flush();
            }
        }
        "sleep" => std::thread::sleep(Duration::from_secs_f64(number(step, 1, None))),
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "exit" => {
            let _ = out.flush();
            return Some(number(step, 1, Some(0)));
        }
        "ignore-sigterm" => {
            // SAFETY: setting a signal to SIG_IGN installs no handler code.
            unsafe {
                let _ =
                    nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn);
            }
        }
        "grandchild" => {
            let _ = out.flush();
            drop(out);
            grandchild(step.get(1).map(String::as_str));
        }
        "flood" => {
            let total: usize = number(step, 1, None);
            let line = format!("{}\n", "flood ".repeat(16));
            let mut written = 0;
            while written < total {
                let n = line.len().min(total - written);
                if out.write_all(&line.as_bytes()[..n]).is_err() {
                    break;
                }
                written += n;
            }
        }
        "garbage" => {
            let _ = out.write_all(b"\x00\x01\x02\xff\xfe binary \x1b[31mred\x1b[0m\n");
            let _ = out.write_all(b"invalid utf8 \xc3\x28 here\n");
            let _ = out.write_all(&vec![b'g'; 1024 * 1024]);
            let _ = out.write_all(b"\n{\"type\":\"assistant\",\"message\":{\"id\":\"half\n");
        }
        "write" => {
            let path = std::path::Path::new(step.get(1).map(String::as_str).unwrap_or("out.txt"));
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(parent);
            }
            let text = step[2.min(step.len())..].join(" ");
            if let Err(err) = std::fs::write(path, format!("{text}\n")) {
                let _ = writeln!(out, "write {} failed: {err}", path.display());
                return Some(1);
            }
            let _ = writeln!(out, "wrote {}", path.display());
        }
        "commit" => {
            let message = if rest.is_empty() { "fake-agent commit".to_string() } else { rest };
            let ok = git(&["add", "-A"]) && git(&["commit", "-q", "-m", &message]);
            let _ = writeln!(out, "commit {}", if ok { "ok" } else { "failed" });
            if !ok {
                return Some(1);
            }
        }
        "pwd" => {
            let dir = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
            let _ = writeln!(out, "pwd {dir}");
        }
        "tty" => {
            use std::io::IsTerminal;
            let _ = writeln!(out, "isatty {} {}", std::io::stdin().is_terminal(), std::io::stdout().is_terminal());
        }
        "env" => {
            let name = step.get(1).map(String::as_str).unwrap_or("CORRAL_ADDRESS");
            let _ = writeln!(out, "{name}={}", std::env::var(name).unwrap_or_default());
        }
        "wait-file" => {
            let path = std::path::Path::new(step.get(1).map(String::as_str).unwrap_or("go"));
            while !path.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "echo-input" => {
            let limit: Option<usize> = step.get(1).map(|_| number(step, 1, None));
            let _ = out.flush();
            let stdin = std::io::stdin();
            for (i, line) in stdin.lock().lines().enumerate() {
                if limit.is_some_and(|l| i >= l) {
                    break;
                }
                let Ok(line) = line else { break };
                let _ = writeln!(out, "got {}", line.trim_end_matches('\r'));
                let _ = out.flush();
                if limit.is_some_and(|l| i + 1 >= l) {
                    break;
                }
            }
        }
        "try-write" => {
            let path = step.get(1).map(String::as_str).unwrap_or("out.txt");
            match std::fs::write(path, "try-write\n") {
                Ok(()) => {
                    let _ = writeln!(out, "try-write {path} ok");
                }
                Err(err) => {
                    let _ = writeln!(out, "try-write {path} errno {} ({err})", err.raw_os_error().unwrap_or(0));
                }
            }
        }
        "run" => {
            let Some(program) = step.get(1) else {
                eprintln!("fake-agent: \"run\" needs a command");
                return Some(2);
            };
            let command = step[1..].join(" ");
            match std::process::Command::new(program).args(&step[2..]).stdin(std::process::Stdio::null()).output() {
                Ok(done) => {
                    let said = [done.stdout, done.stderr].concat();
                    let said = String::from_utf8_lossy(&said);
                    let said: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                    let code = done.status.code().map_or("none".to_string(), |c| c.to_string());
                    let _ = writeln!(out, "run {command}: exit {code}: {}", said.join(" | "));
                }
                Err(err) => {
                    let _ = writeln!(out, "run {command}: failed to start: {err}");
                }
            }
        }
        "connect" => {
            let port: u16 = number(step, 1, None);
            match std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5)) {
                Ok(_) => {
                    let _ = writeln!(out, "connect {port} ok");
                }
                Err(err) => {
                    let _ = writeln!(out, "connect {port} errno {} ({err})", err.raw_os_error().unwrap_or(0));
                }
            }
        }
        "alloc" => {
            let megabytes: usize = number(step, 1, None);
            let mut kept: Vec<Vec<u8>> = Vec::with_capacity(megabytes);
            for _ in 0..megabytes {
                // Touched, so the memory is really used.
                kept.push(vec![1u8; 1 << 20]);
            }
            let _ = writeln!(out, "alloc {megabytes} ok");
            std::mem::forget(kept);
        }
        "fds" => {
            let count: usize = number(step, 1, None);
            let opened: Vec<std::fs::File> = (0..count).map_while(|_| std::fs::File::open("/dev/null").ok()).collect();
            let _ = writeln!(out, "fds opened {}", opened.len());
            std::mem::forget(opened);
        }
        "forks" => {
            let count: usize = number(step, 1, None);
            let mut children = Vec::new();
            for _ in 0..count {
                match std::process::Command::new("sleep").arg("30").spawn() {
                    Ok(child) => children.push(child),
                    Err(_) => break,
                }
            }
            let _ = writeln!(out, "forks started {}", children.len());
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        _ => unreachable!("checked by parse"),
    }
    let _ = std::io::stdout().flush();
    None
}

fn git(args: &[&str]) -> bool {
    std::process::Command::new("git")
        .args(["-c", "user.name=corral fake agent", "-c", "user.email=fake-agent@corral.invalid"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn grandchild(pid_file: Option<&str>) {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: the fake agent is single-threaded at this point; the children
    // only call async-signal-safe functions before they sleep or exit.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let _ = setsid();
                unsafe {
                    let _ = nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGTERM,
                        nix::sys::signal::SigHandler::SigIgn,
                    );
                }
                let pid = std::process::id();
                if let Some(path) = pid_file {
                    let _ = std::fs::write(path, pid.to_string());
                }
                println!("grandchild {pid}");
                let _ = std::io::stdout().flush();
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            _ => unsafe { libc::_exit(0) },
        },
        Ok(ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
            // Wait until the grandchild has said who it is, so the script's
            // next step runs with the grandchild in place.
            if let Some(path) = pid_file {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::fs::read_to_string(path).map_or(true, |s| s.is_empty())
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        Err(err) => eprintln!("fake-agent: fork failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_and_quotes() {
        let steps = parse("print 'hello world'; progress 3 5 ;exit 2").unwrap();
        assert_eq!(steps, vec![vec!["print", "hello world"], vec!["progress", "3", "5"], vec!["exit", "2"]]);
        assert!(parse("bogus 1").unwrap_err().contains("unknown step"));
        assert!(parse("print 'open").is_err());
        assert_eq!(parse("stamp 5 10").unwrap(), vec![vec!["stamp", "5", "10"]]);
    }
}
