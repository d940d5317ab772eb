//! The sandbox: what an agent may write, which TCP it may open, and how
//! much memory, how many processes and open files it may use; and how
//! corral makes the kernel hold it to that, whatever its CLI does.
//!
//! Owns: the settings as types ([`Network`], [`Limits`], [`Fallback`]);
//! what the kernel offers ([`Kernel`]: the Landlock ABI, the cgroups
//! corral can make) and what a spawn asks for, checked against it
//! ([`resolve`]: refuse what cannot be enforced, or run without it and say
//! so); what the agent's record and the journal keep ([`SandboxSpec`],
//! [`Enforced`]); the plan the agent's own process applies before it execs
//! the CLI ([`Plan`]); and telling, once the agent ended, whether a limit
//! ended it ([`limit_hit`]). Only this module calls Landlock and
//! `setrlimit` and writes cgroup files.
//!
//! | room | what |
//! |---|---|
//! | this one | the types, [`Kernel::probe`], [`resolve`] (pure), [`Plan::for_agent`] (pure), [`limit_hit`] (pure) |
//! | `apply` | in the agent's process, before exec: cgroups, rlimits, `PR_SET_NO_NEW_PRIVS`, Landlock |
//! | `cgroup` | finding where a cgroup can be made, making, reading and removing an agent's |
//! | `confine` | which requests a sandboxed agent may make of the daemon |
//!
//! # What each mode allows, as enforced
//!
//! - `workspace-write`: reads and executes anywhere but the deny list
//!   (`sandbox_deny_read`, default `~/.ssh`, `~/.aws`, `~/.gnupg`); writes
//!   only in its worktree, `<git common dir>/objects`, its worktree's admin
//!   folder `<git common dir>/worktrees/<name>`, the ref folder of its own
//!   branch and that folder's reflogs (`refs/heads/corral/root/<flat>/`,
//!   `logs/refs/heads/corral/root/<flat>/`: its branch is
//!   `corral/root/<flat>/work`, alone in its folder, so no other branch can
//!   be moved), its private `TMPDIR`, its CLI's private state folder, and
//!   the devices `/dev/null`, `/dev/zero`, `/dev/full`, `/dev/tty`,
//!   `/dev/ptmx` and its own PTY.
//! - `read-only`: the same reads; writes only its `TMPDIR`, its state
//!   folder and those devices.
//! - `full` (or no sandbox): unrestricted.
//!
//! Under `read-only` and `workspace-write` (Landlock ABI 6 and later) the
//! agent also cannot signal processes outside its sandbox, nor connect to
//! abstract UNIX sockets made outside it. Named UNIX sockets (the daemon's)
//! stay reachable: Landlock up to ABI 7 does not cover them.
//!
//! Network (`--network`, Landlock ABI 4 and later, TCP only: UDP is not
//! covered): `none` allows no TCP connect or bind; `model` allows a TCP
//! connect only to the agent's own metering proxy (its monitor adds the
//! port to the plan once bound, see `Plan::model`) and to the port
//! `CORRAL_PROXY_PORT` names in the spawning environment (with neither,
//! no port); `full` is unrestricted and is the default.
//!
//! Limits: `max_open_files` is `RLIMIT_NOFILE`; `max_processes` is a pids
//! cgroup's `pids.max` (`RLIMIT_NPROC` counts every process of the user,
//! and none of root's); `max_memory` is a cgroup v2 `memory.max` where
//! corral can make one, else `RLIMIT_AS` (the address space of each
//! process). A memory cgroup v1 is never used: its accounting differs, and
//! where it exists it usually belongs to whoever runs corral.

mod apply;
pub(crate) mod cgroup;
pub mod confine;

pub use apply::apply;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Sandbox;

/// The oldest Landlock ABI a file-system sandbox needs: file rights (1),
/// renames and links across folders (2, git moves its new objects so),
/// and truncation (3; before it, `truncate(2)` is not covered at all).
pub const FS_MIN_ABI: u32 = 3;
/// The oldest Landlock ABI with TCP rules.
pub const NET_MIN_ABI: u32 = 4;
/// The oldest Landlock ABI that scopes signals and abstract UNIX sockets.
pub const SCOPE_MIN_ABI: u32 = 6;
/// The newest Landlock ABI whose rights corral asks for: newer ABIs cover
/// more (ABI 8 named UNIX sockets, which agents need for the daemon), and
/// are used once corral allows what they cover.
pub const MAX_ABI: u32 = 7;

/// The environment variable (in the spawning environment) that makes corral
/// believe the kernel has this Landlock ABI (0: none), for tests of the
/// fail-closed path. It can only lower what the kernel has.
pub const TEST_ABI_VARIABLE: &str = "CORRAL_TEST_LANDLOCK_ABI";

/// The environment variable (in the spawning environment) naming the port
/// of corral's model proxy, the one TCP port `--network model` allows.
pub const PROXY_PORT_VARIABLE: &str = "CORRAL_PROXY_PORT";

/// The paths denied to reads when `sandbox_deny_read` is not set.
pub const DEFAULT_DENY_READ: [&str; 3] = ["~/.ssh", "~/.aws", "~/.gnupg"];

/// What TCP an agent may open, narrowest first (a child's is never wider
/// than its parent's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No TCP connect or bind at all.
    None,
    /// A TCP connect to corral's model proxy only.
    Model,
    /// Unrestricted.
    Full,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Model => "model",
            Network::Full => "full",
        }
    }
}

/// What to do when the kernel cannot enforce what a sandbox asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Refuse the spawn, saying what is missing (fail closed).
    #[default]
    Refuse,
    /// Run with what can be enforced; `enforced.not_enforced` says what is not.
    Warn,
}

/// An agent's resource limits, as `resources.limits` in Kubernetes; unset
/// means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// A child's limits under its parent's: each limit the child leaves
    /// unset is the parent's, and none may be larger (the error names it).
    pub fn within(&self, parent: &Limits) -> Result<Limits, String> {
        let one = |kind: LimitKind, wanted: Option<u64>, allowed: Option<u64>| match (wanted, allowed) {
            (None, allowed) => Ok(allowed),
            (Some(wanted), Some(allowed)) if wanted > allowed => Err(format!(
                "it asks for {} {} but its parent's is {}",
                kind.as_str(),
                kind.show(wanted),
                kind.show(allowed)
            )),
            (wanted, _) => Ok(wanted),
        };
        Ok(Limits {
            max_memory: one(LimitKind::MaxMemory, self.max_memory, parent.max_memory)?,
            max_processes: one(LimitKind::MaxProcesses, self.max_processes, parent.max_processes)?,
            max_open_files: one(LimitKind::MaxOpenFiles, self.max_open_files, parent.max_open_files)?,
        })
    }
}

/// One kind of resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    MaxMemory,
    MaxProcesses,
    MaxOpenFiles,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::MaxMemory => "max_memory",
            LimitKind::MaxProcesses => "max_processes",
            LimitKind::MaxOpenFiles => "max_open_files",
        }
    }

    /// A value of this limit for people: `64 MiB`, `100`.
    pub fn show(self, value: u64) -> String {
        match self {
            LimitKind::MaxMemory => show_bytes(value),
            _ => value.to_string(),
        }
    }
}

/// `1048576` -> `1 MiB`; whole units where they fit.
pub fn show_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return match bytes % size {
                0 => format!("{} {unit}", bytes / size),
                _ => format!("{:.1} {unit}", bytes as f64 / size as f64),
            };
        }
    }
    format!("{bytes} bytes")
}

/// A memory size as people write it: `512M`, `512MiB`, `2G`, `1.5GB`,
/// `4096K`, or a number of bytes. Units are binary (`M` is 2^20 bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a memory size (for example 512M or 2G)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?}: must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

/// What an agent runs under, as the journal's `spawned` event and the
/// agent's record keep it: the mode (the event's `sandbox`, as before),
/// the network, the limits, and what was enforced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    #[serde(rename = "sandbox", default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Sandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<Enforced>,
}

/// What the kernel is made to enforce for an agent (in `ps --json` and the
/// `spawned` event): everything here holds from before the agent's first
/// instruction, or the agent does not start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    /// The Landlock ABI its rules are written for; 0: no Landlock.
    pub landlock_abi: u32,
    /// What it may write: `read-only`, `workspace-write`, or `full`
    /// (anything).
    pub filesystem: Option<Sandbox>,
    /// What TCP it may open.
    pub network: Option<Network>,
    /// The TCP ports it may connect to under `network = "model"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect_ports: Vec<u16>,
    /// Signals and abstract UNIX sockets are kept inside its sandbox.
    #[serde(default)]
    pub scoped: bool,
    /// Paths it may not read (with the file-system sandbox).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_read: Vec<PathBuf>,
    /// Each limit, and what enforces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitEnforced>,
    /// What was asked for and cannot be enforced here (only with
    /// `sandbox_fallback = "warn"`; otherwise the spawn is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enforced: Vec<String>,
}

/// One limit and its mechanism (`cgroup pids.max`, `RLIMIT_AS`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitEnforced {
    pub limit: LimitKind,
    pub value: u64,
    pub by: String,
}

impl Enforced {
    /// True when anything is restricted: files, TCP or a limit.
    pub fn restricts(&self) -> bool {
        restricts_files(self.filesystem) || self.network.is_some_and(|n| n != Network::Full) || !self.limits.is_empty()
    }

    /// A short word for `corral ps`: the file-system mode, and the network
    /// when it is restricted (`workspace-write net:none`), `!` when
    /// something asked for is not enforced.
    pub fn summary(&self) -> String {
        let mut text = self.filesystem.map_or("full", sandbox_word).to_string();
        if let Some(network) = self.network.filter(|n| *n != Network::Full) {
            text.push_str(&format!(" net:{}", network.as_str()));
        }
        if !self.not_enforced.is_empty() {
            text.push('!');
        }
        text
    }
}

/// `read-only`, `workspace-write`, `full`: a mode as corral.toml spells it.
pub fn sandbox_word(mode: Sandbox) -> &'static str {
    match mode {
        Sandbox::ReadOnly => "read-only",
        Sandbox::WorkspaceWrite => "workspace-write",
        Sandbox::Full => "full",
    }
}

/// True for the modes that restrict writes.
pub fn restricts_files(mode: Option<Sandbox>) -> bool {
    matches!(mode, Some(Sandbox::ReadOnly | Sandbox::WorkspaceWrite))
}

/// What a spawn asks for (its settings, inherited and checked).
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub mode: Option<Sandbox>,
    pub network: Option<Network>,
    pub limits: Limits,
    /// Absolute paths (`~` already expanded).
    pub deny_read: Vec<PathBuf>,
    pub fallback: Fallback,
    pub proxy_port: Option<u16>,
}

/// What this machine offers a sandbox.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Landlock's ABI (0: none), after the test switch.
    pub landlock_abi: u32,
    /// The ABI came from [`TEST_ABI_VARIABLE`].
    pub simulated: bool,
    /// Where a pids cgroup can be made, or why not.
    pub pids_cgroup: Result<cgroup::Hierarchy, String>,
    /// Where a cgroup v2 with the memory controller can be made, or why not.
    pub memory_cgroup: Result<cgroup::Hierarchy, String>,
}

impl Kernel {
    /// Asks the kernel (and the test switch in `env`, the spawning
    /// environment). The cgroups are only looked for when `limits` needs
    /// them.
    pub fn probe(env: &BTreeMap<String, String>, limits: &Limits) -> Kernel {
        let real = landlock_abi();
        let simulated = env.get(TEST_ABI_VARIABLE).and_then(|v| v.trim().parse::<u32>().ok());
        let not_asked = || Err("not asked for".to_string());
        Kernel {
            landlock_abi: simulated.map_or(real, |s| s.min(real)),
            simulated: simulated.is_some(),
            pids_cgroup: if limits.max_processes.is_some() { cgroup::Hierarchy::find("pids") } else { not_asked() },
            memory_cgroup: if limits.max_memory.is_some() { cgroup::Hierarchy::find_v2("memory") } else { not_asked() },
        }
    }

    fn describe_abi(&self) -> String {
        let how = if self.simulated { format!(" ({TEST_ABI_VARIABLE} says so)") } else { String::new() };
        match self.landlock_abi {
            0 => format!("this kernel has no Landlock{how}"),
            abi => format!("this kernel has Landlock ABI {abi}{how}"),
        }
    }
}

/// The Landlock ABI of the running kernel; 0 when it has none (or has it
/// disabled).
pub fn landlock_abi() -> u32 {
    landlock_abi_or_why().unwrap_or(0)
}

/// The Landlock ABI of the running kernel, or why there is none, in words
/// a person can act on (`corral doctor` says them).
pub fn landlock_abi_or_why() -> std::result::Result<u32, String> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the
    // VERSION flag only returns the ABI version (or -1); it touches no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if let Some(abi) = u32::try_from(abi).ok().filter(|abi| *abi > 0) {
        return Ok(abi);
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no Landlock (Linux 5.13 or later has it)".into(),
        Some(libc::EOPNOTSUPP) => "Landlock is built in but not enabled (add landlock to the lsm= boot option)".into(),
        _ => format!("the kernel refused the question: {err}"),
    })
}

/// Checks what is wanted against what the kernel offers: what will be
/// enforced, or (failing closed) why the spawn is refused. With
/// `Fallback::Warn`, what cannot be enforced is listed instead and left out.
pub fn resolve(wanted: &Wanted, kernel: &Kernel) -> Result<Enforced, String> {
    let abi = kernel.landlock_abi.min(MAX_ABI);
    let mut missing = Vec::new();
    let mut enforced = Enforced { landlock_abi: 0, ..Enforced::default() };

    let files = restricts_files(wanted.mode);
    if files {
        let mode = sandbox_word(wanted.mode.unwrap_or(Sandbox::Full));
        if abi >= FS_MIN_ABI {
            enforced.filesystem = wanted.mode;
            enforced.deny_read = wanted.deny_read.clone();
            enforced.scoped = abi >= SCOPE_MIN_ABI;
        } else {
            missing.push(format!(
                "the {mode} sandbox needs Landlock ABI {FS_MIN_ABI} or later, and {}",
                kernel.describe_abi()
            ));
        }
    }
    let network = wanted.network.unwrap_or(Network::Full);
    if network != Network::Full {
        if abi >= NET_MIN_ABI {
            enforced.network = Some(network);
            if network == Network::Model {
                enforced.connect_ports = wanted.proxy_port.into_iter().collect();
            }
        } else {
            missing.push(format!(
                "--network {} needs Landlock ABI {NET_MIN_ABI} or later (TCP rules), and {}",
                network.as_str(),
                kernel.describe_abi()
            ));
        }
    }
    if enforced.filesystem.is_some() || enforced.network.is_some() {
        enforced.landlock_abi = abi;
    }
    if enforced.filesystem.is_none() {
        enforced.filesystem = Some(Sandbox::Full);
    }
    if enforced.network.is_none() {
        enforced.network = Some(Network::Full);
    }

    let limits = &wanted.limits;
    if let Some(bytes) = limits.max_memory {
        let by = match &kernel.memory_cgroup {
            Ok(_) => "cgroup v2 memory.max".to_string(),
            Err(_) => "RLIMIT_AS (the address space of each process)".to_string(),
        };
        enforced.limits.push(LimitEnforced { limit: LimitKind::MaxMemory, value: bytes, by });
    }
    if let Some(count) = limits.max_processes {
        match &kernel.pids_cgroup {
            Ok(hierarchy) => enforced.limits.push(LimitEnforced {
                limit: LimitKind::MaxProcesses,
                value: count,
                by: format!("cgroup v{} pids.max", hierarchy.version),
            }),
            Err(why) => missing.push(format!(
                "max_processes needs a pids cgroup corral can make ({why}); RLIMIT_NPROC would count every process of the user, not the agent's"
            )),
        }
    }
    if let Some(count) = limits.max_open_files {
        enforced.limits.push(LimitEnforced {
            limit: LimitKind::MaxOpenFiles,
            value: count,
            by: "RLIMIT_NOFILE".into(),
        });
    }

    if missing.is_empty() {
        return Ok(enforced);
    }
    match wanted.fallback {
        Fallback::Refuse => Err(format!("{}; set sandbox_fallback = \"warn\" to run it without", missing.join("; "))),
        Fallback::Warn => {
            enforced.not_enforced = missing;
            Ok(enforced)
        }
    }
}

/// `~/x` with the person's home; other paths as they are. Relative paths
/// and a missing home give nothing.
pub fn expand_home(path: &str, home: Option<&Path>) -> Option<PathBuf> {
    let path = match path.strip_prefix("~/") {
        Some(rest) => home?.join(rest),
        None if path == "~" => home?.to_path_buf(),
        None => PathBuf::from(path),
    };
    path.is_absolute().then_some(path)
}

/// Where an agent's sandbox lets it write, besides its devices.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    pub worktree: PathBuf,
    /// `<git common dir>`.
    pub git_common: PathBuf,
    /// `<git common dir>/worktrees/<name>`.
    pub git_admin: PathBuf,
    /// The agent's branch, e.g. `corral/root/api/work`.
    pub branch: String,
    /// Its private temporary folder (`TMPDIR`).
    pub tmp: PathBuf,
    /// Its CLI's private state folder.
    pub state: PathBuf,
}

impl AgentPaths {
    /// The ref folder of the branch and its reflog folder, in the common
    /// dir: `refs/heads/corral/root/api/` and `logs/refs/heads/corral/root/api/`.
    pub fn ref_folders(&self) -> Vec<PathBuf> {
        let folder = Path::new(&self.branch).parent().unwrap_or(Path::new("")).to_path_buf();
        vec![self.git_common.join("refs/heads").join(&folder), self.git_common.join("logs/refs/heads").join(&folder)]
    }
}

/// The admin folder git keeps for the linked worktree at `worktree`
/// (`gitdir:` in its `.git` file).
pub fn worktree_admin_dir(worktree: &Path) -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string(worktree.join(".git"))?;
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("gitdir:"))
        .map(|d| PathBuf::from(d.trim()))
        .ok_or_else(|| std::io::Error::other(format!("{} names no gitdir", worktree.join(".git").display())))?;
    let dir = if dir.is_absolute() { dir } else { worktree.join(dir) };
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// What the agent's own process applies before it execs the CLI: the
/// `sandbox` of the monitor's spec (and `sandbox.json` in the agent's
/// folder, which the shim reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// 0: no Landlock rules (only limits).
    pub landlock_abi: u32,
    /// Restrict the file system (reads but the deny list, writes in `write`).
    pub filesystem: bool,
    /// Folders and files it may write (all rights beneath).
    #[serde(default)]
    pub write: Vec<PathBuf>,
    #[serde(default)]
    pub deny_read: Vec<PathBuf>,
    /// Restrict TCP to connects to `connect_ports`.
    pub network: bool,
    #[serde(default)]
    pub connect_ports: Vec<u16>,
    /// `--network model`: the agent's own metering proxy is reachable too
    /// (its monitor adds the port to `connect_ports` once it is bound).
    #[serde(default)]
    pub model: bool,
    pub scoped: bool,
    /// Run with what the kernel can do rather than fail (fallback warn).
    pub best_effort: bool,
    #[serde(default)]
    pub rlimit_as: Option<u64>,
    #[serde(default)]
    pub rlimit_nofile: Option<u64>,
    /// The agent's cgroups: made by the monitor, joined by the agent.
    #[serde(default)]
    pub cgroups: Vec<cgroup::AgentCgroup>,
    /// `max_memory`, for telling whether it ended the agent.
    #[serde(default)]
    pub max_memory: Option<u64>,
}

impl Plan {
    /// The plan for an agent with `enforced` (from [`resolve`]) whose paths
    /// are `paths`; `cgroup_name` names its cgroups (unique on the machine).
    /// `paths` are needed when the file system is restricted (without
    /// them it is not).
    pub fn for_agent(enforced: &Enforced, paths: Option<&AgentPaths>, kernel: &Kernel, cgroup_name: &str) -> Plan {
        let filesystem = restricts_files(enforced.filesystem) && paths.is_some();
        let network = enforced.network.is_some_and(|n| n != Network::Full);
        let mut write = Vec::new();
        if let Some(paths) = paths {
            write.extend([paths.tmp.clone(), paths.state.clone()]);
            if enforced.filesystem == Some(Sandbox::WorkspaceWrite) {
                write.push(paths.worktree.clone());
                write.push(paths.git_common.join("objects"));
                write.push(paths.git_admin.clone());
                write.extend(paths.ref_folders());
            }
        }
        let mut plan = Plan {
            landlock_abi: enforced.landlock_abi,
            filesystem,
            write: if filesystem { write } else { Vec::new() },
            deny_read: if filesystem { enforced.deny_read.clone() } else { Vec::new() },
            network,
            connect_ports: enforced.connect_ports.clone(),
            model: enforced.network == Some(Network::Model),
            scoped: enforced.scoped,
            best_effort: !enforced.not_enforced.is_empty(),
            ..Plan::default()
        };
        for limit in &enforced.limits {
            match limit.limit {
                LimitKind::MaxMemory => {
                    plan.max_memory = Some(limit.value);
                    match &kernel.memory_cgroup {
                        Ok(hierarchy) if limit.by.starts_with("cgroup") => {
                            plan.cgroups.push(hierarchy.agent(cgroup_name, "memory", limit.value))
                        }
                        _ => plan.rlimit_as = Some(limit.value),
                    }
                }
                LimitKind::MaxProcesses => {
                    if let Ok(hierarchy) = &kernel.pids_cgroup {
                        plan.cgroups.push(hierarchy.agent(cgroup_name, "pids", limit.value));
                    }
                }
                LimitKind::MaxOpenFiles => plan.rlimit_nofile = Some(limit.value),
            }
        }
        plan
    }

    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        !self.filesystem
            && !self.network
            && self.rlimit_as.is_none()
            && self.rlimit_nofile.is_none()
            && self.cgroups.is_empty()
    }
}

/// A limit that ended an agent, as its monitor tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitHit {
    pub limit: LimitKind,
    pub value: u64,
    /// How it was told: `memory.events oom_kill`, a signal after an
    /// allocation failed, ...
    pub how: String,
}

impl LimitHit {
    /// `max_memory 64 MiB (how)`.
    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.limit.as_str(), self.limit.show(self.value), self.how)
    }
}

/// What the agent's cgroups counted during one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes the kernel killed for memory (`memory.events oom_kill`).
    pub oom_kills: u64,
    /// Forks refused at `pids.max` (`pids.events max`).
    pub pids_refused: u64,
}

/// Whether a limit ended the agent's run that ended with `code` or
/// `signal`: a memory cgroup that killed for memory, or (under `RLIMIT_AS`)
/// a crash by SIGABRT, SIGSEGV or SIGBUS, or output that says an
/// allocation failed; a pids cgroup that refused forks. A run that exited
/// 0, or was stopped, was ended by no limit.
pub fn limit_hit(
    plan: &Plan,
    code: Option<i32>,
    signal: Option<i32>,
    counters: Counters,
    log_tail: &[u8],
) -> Option<LimitHit> {
    if code == Some(0) {
        return None;
    }
    if let Some(bytes) = plan.max_memory {
        if counters.oom_kills > 0 {
            let how = format!("the kernel killed {} of its processes for memory", counters.oom_kills);
            return Some(LimitHit { limit: LimitKind::MaxMemory, value: bytes, how });
        }
        if plan.rlimit_as.is_some() {
            let crashed = signal.filter(|s| [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS].contains(s));
            let said = allocation_failed(log_tail);
            if crashed.is_some() || said.is_some() {
                let how = match (crashed, said) {
                    (Some(signal), Some(line)) => format!("killed by signal {signal} after: {line}"),
                    (Some(signal), None) => format!("killed by signal {signal} under its address-space limit"),
                    (None, Some(line)) => line,
                    (None, None) => unreachable!(),
                };
                return Some(LimitHit { limit: LimitKind::MaxMemory, value: bytes, how });
            }
        }
    }
    if counters.pids_refused > 0 {
        let value = plan.cgroups.iter().find(|c| c.controller == "pids").map_or(0, |c| c.max);
        let how = format!("{} new processes were refused", counters.pids_refused);
        return Some(LimitHit { limit: LimitKind::MaxProcesses, value, how });
    }
    None
}

/// The last line of `log_tail` that says an allocation failed, if any.
fn allocation_failed(log_tail: &[u8]) -> Option<String> {
    const SAYINGS: [&str; 7] = [
        "memory allocation of",
        "out of memory",
        "cannot allocate memory",
        "memoryerror",
        "std::bad_alloc",
        "failed to allocate",
        "allocation failed",
    ];
    let text = String::from_utf8_lossy(log_tail);
    text.lines()
        .rev()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c == '\r'))
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            SAYINGS.iter().any(|s| lower.contains(s))
        })
        .map(|l| l.chars().take(200).collect())
}

/// Eight hex digits of a path (FNV-1a: stable across runs), to tell the
/// cgroups of two repositories apart.
pub fn short_hash(path: &Path) -> String {
    let mut hash: u32 = 0x811c9dc5;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x01000193);
    }
    format!("{hash:08x}")
}

/// The private folders of a sandboxed agent, in its folder of the state
/// folder: `tmp/` (its `TMPDIR`) and `home/` (its CLI's state), made with
/// mode 0700.
pub fn make_private_folders(agent_dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::DirBuilderExt;
    let (tmp, state) = (agent_dir.join("tmp"), agent_dir.join("home"));
    for dir in [&tmp, &state] {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    Ok((tmp, state))
}

#[cfg(test)]
mod tests;
