//! Applying a [`Plan`] in the agent's own process, just before it execs
//! the CLI (`corral exec-agent`): join its cgroups, set its rlimits, then
//! `PR_SET_NO_NEW_PRIVS` and the Landlock ruleset. Everything the agent
//! execs afterwards inherits all of it, and nothing can lift it.
//!
//! Reads: Landlock can only grant, so "everything but the deny list" is
//! granted as every entry of each folder on the way to a denied path,
//! except the next folder on that way (which is listed, not read), and
//! except the denied path. Entries made in those folders later are not
//! readable.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{Plan, MAX_ABI};

/// Devices any sandboxed agent may read and write, besides its own PTY.
const DEVICES: [&str; 5] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx"];

/// Applies `plan` to the calling (single-threaded) process; the error says
/// what could not be applied, and the caller must then not exec the agent.
pub fn apply(plan: &Plan) -> Result<(), String> {
    for cgroup in &plan.cgroups {
        cgroup.join().map_err(|e| format!("cannot join the cgroup {}: {e}", cgroup.path.display()))?;
    }
    if let Some(bytes) = plan.rlimit_as {
        set_rlimit(libc::RLIMIT_AS, bytes, "RLIMIT_AS (max_memory)")?;
    }
    if let Some(count) = plan.rlimit_nofile {
        set_rlimit(libc::RLIMIT_NOFILE, count, "RLIMIT_NOFILE (max_open_files)")?;
    }
    if plan.landlock_abi > 0 && (plan.filesystem || plan.network) {
        landlock(plan)?;
    }
    Ok(())
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> Result<(), String> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(format!("cannot set {what} to {value}: {}", std::io::Error::last_os_error()))
    }
}

fn landlock(plan: &Plan) -> Result<(), String> {
    let abi = ABI::from(plan.landlock_abi.min(MAX_ABI) as i32);
    let level = if plan.best_effort { CompatLevel::BestEffort } else { CompatLevel::HardRequirement };
    let failed = |e: landlock::RulesetError| format!("Landlock: {e}");
    let mut ruleset = Ruleset::default().set_compatibility(level);
    if plan.filesystem {
        ruleset = ruleset.handle_access(AccessFs::from_all(abi)).map_err(failed)?;
        if plan.scoped {
            ruleset = ruleset.scope(Scope::from_all(abi)).map_err(failed)?;
        }
    }
    if plan.network {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp).map_err(failed)?;
    }
    let mut created = ruleset.create().map_err(failed)?;
    if plan.filesystem {
        let (read, list) = read_roots(&plan.deny_read);
        let mut rules: Vec<(PathBuf, BitFlags<AccessFs>)> = Vec::new();
        rules.extend(read.into_iter().map(|p| (p, AccessFs::from_read(abi))));
        rules.extend(list.into_iter().map(|p| (p, AccessFs::ReadDir.into())));
        rules.extend(plan.write.iter().map(|p| (p.clone(), AccessFs::from_all(abi))));
        rules.extend(DEVICES.iter().map(|d| (PathBuf::from(d), AccessFs::from_all(abi))));
        rules.extend(own_terminal().map(|t| (t, AccessFs::from_all(abi))));
        for (path, access) in rules {
            // What is missing cannot be reached either; skip it.
            let Ok(metadata) = std::fs::metadata(&path) else { continue };
            // A rule on a file may carry file rights only.
            let access = if metadata.is_dir() { access } else { access & AccessFs::from_file(abi) };
            if metadata.file_type().is_block_device() || access.is_empty() {
                continue;
            }
            let fd = PathFd::new(&path).map_err(|e| format!("Landlock: cannot open {}: {e}", path.display()))?;
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| format!("Landlock: rule for {}: {e}", path.display()))?;
        }
    }
    if plan.network {
        for port in &plan.connect_ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp)).map_err(failed)?;
        }
    }
    let status = created.restrict_self().map_err(failed)?;
    if !plan.best_effort && status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!("Landlock: the ruleset is {:?}, not fully enforced", status.ruleset));
    }
    if !status.no_new_privs {
        return Err("cannot set PR_SET_NO_NEW_PRIVS".into());
    }
    Ok(())
}

/// The PTY slave on the process's standard output (or error), if any.
fn own_terminal() -> Option<PathBuf> {
    [1, 2, 0].into_iter().find_map(|fd| {
        // SAFETY: isatty only looks at the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().filter(|p| p.starts_with("/dev/"))
    })
}

/// What may be read when `deny` may not: paths readable whole, and the
/// folders on the way to a denied path, which may only be listed.
pub(super) fn read_roots(deny: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let denied: BTreeSet<PathBuf> = deny.iter().map(|p| resolve(p)).filter(|p| p != Path::new("/")).collect();
    if denied.is_empty() {
        return (vec![PathBuf::from("/")], Vec::new());
    }
    let on_the_way: BTreeSet<PathBuf> =
        denied.iter().flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf)).collect();
    let mut read = Vec::new();
    for folder in &on_the_way {
        let Ok(entries) = std::fs::read_dir(folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if on_the_way.contains(&path) || denied.contains(&path) {
                continue;
            }
            // A link is granted where it leads: never into a denied path,
            // nor onto a folder on the way (which holds one).
            let target = path.canonicalize().unwrap_or_else(|_| path.clone());
            if denied.iter().any(|d| target.starts_with(d)) || on_the_way.contains(&target) {
                continue;
            }
            read.push(path);
        }
    }
    (read, on_the_way.into_iter().collect())
}

/// `path` with links resolved as far as it exists; a path that does not
/// exist yet is denied too, should it appear while the agent runs (its
/// folder's entries are then granted one by one).
fn resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = at.canonicalize() {
            return rest.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}
