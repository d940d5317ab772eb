//! An agent's cgroups: where one can be made for a controller, making it
//! with its limit, joining it (the agent's own process, before exec),
//! reading what it counted, and removing it.
//!
//! A cgroup is made below corral's own cgroup in the controller's
//! hierarchy (`/proc/self/cgroup`, mount points from
//! `/proc/self/mountinfo`): cgroup v1 for `pids`, v2 for either, as long as
//! corral may write there. A v2 parent must have the controller in its
//! `cgroup.subtree_control`: corral does not turn controllers on in a
//! cgroup it does not own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A controller's hierarchy, at corral's own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: u8,
    /// Corral's own cgroup in it: the parent of the agents'.
    pub parent: PathBuf,
}

/// One cgroup of an agent's, as its plan holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCgroup {
    pub path: PathBuf,
    /// `pids` or `memory`.
    pub controller: String,
    pub version: u8,
    /// `pids.max` or `memory.max`.
    pub max: u64,
}

impl Hierarchy {
    /// Where a cgroup with `controller` can be made: v2 where corral's
    /// cgroup delegates it, else v1 (never for `memory`: see the module
    /// of the sandbox). The error says why none.
    pub fn find(controller: &str) -> Result<Hierarchy, String> {
        match Hierarchy::find_v2(controller) {
            Ok(found) => Ok(found),
            Err(v2) => Hierarchy::find_v1(controller).map_err(|v1| format!("{v2}; {v1}")),
        }
    }

    /// A cgroup v2 hierarchy with `controller`, at corral's cgroup.
    pub fn find_v2(controller: &str) -> Result<Hierarchy, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mount = mount_points(&mountinfo).into_iter().find(|(kind, _, _)| kind == "cgroup2").map(|(_, at, _)| at);
        let Some(mount) = mount else { return Err("no cgroup v2 is mounted".into()) };
        let path = own_path(&own, None).ok_or("corral's cgroup v2 is unknown")?;
        let parent = mount.join(path.trim_start_matches('/'));
        let delegated = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        if !delegated.split_whitespace().any(|c| c == controller) {
            return Err(format!("the cgroup v2 {} does not delegate {controller}", parent.display()));
        }
        writable(&parent)?;
        Ok(Hierarchy { version: 2, parent })
    }

    fn find_v1(controller: &str) -> Result<Hierarchy, String> {
        if controller == "memory" {
            return Err("a memory cgroup v1 is not used".into());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mount = mount_points(&mountinfo)
            .into_iter()
            .find(|(kind, _, options)| kind == "cgroup" && options.split(',').any(|o| o == controller))
            .map(|(_, at, _)| at)
            .ok_or_else(|| format!("no cgroup v1 {controller} hierarchy is mounted"))?;
        let path = own_path(&own, Some(controller)).ok_or(format!("corral's {controller} cgroup is unknown"))?;
        let parent = mount.join(path.trim_start_matches('/'));
        writable(&parent)?;
        Ok(Hierarchy { version: 1, parent })
    }

    /// The agent's cgroup named `name` in this hierarchy.
    pub fn agent(&self, name: &str, controller: &str, max: u64) -> AgentCgroup {
        AgentCgroup { path: self.parent.join(name), controller: controller.into(), version: self.version, max }
    }
}

fn writable(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: access(2) reads the NUL-terminated path only.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(format!("{} is not writable: {}", dir.display(), std::io::Error::last_os_error()))
    }
}

/// `(filesystem type, mount point, super options)` of each mount.
fn mount_points(mountinfo: &str) -> Vec<(String, PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let at = left.split_whitespace().nth(4)?;
            let mut right = right.split_whitespace();
            let kind = right.next()?;
            let _source = right.next();
            let options = right.next().unwrap_or("");
            Some((kind.to_string(), PathBuf::from(at), options.to_string()))
        })
        .collect()
}

/// Corral's path in a hierarchy, from `/proc/self/cgroup`: the v2 line
/// (`0::/path`) for `None`, else the v1 line listing `controller`.
fn own_path(cgroup: &str, controller: Option<&str>) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let found = match controller {
            None => controllers.is_empty(),
            Some(wanted) => controllers.split(',').any(|c| c == wanted),
        };
        found.then(|| path.to_string())
    })
}

impl AgentCgroup {
    /// Makes the cgroup (or keeps the one there) and sets its limit.
    pub fn make(&self) -> std::io::Result<()> {
        match std::fs::create_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let file = format!("{}.max", self.controller);
        std::fs::write(self.path.join(&file), self.max.to_string()).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot write {}: {e}", self.path.join(&file).display()))
        })?;
        if self.controller == "memory" {
            // Swap would let it hold more than its limit.
            let _ = std::fs::write(self.path.join("memory.swap.max"), "0");
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup.
    pub fn join(&self) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), std::process::id().to_string())
    }

    /// What the cgroup counted so far: `oom_kill` of `memory.events`,
    /// `max` of `pids.events`.
    pub fn count(&self) -> u64 {
        let (file, key) = match self.controller.as_str() {
            "memory" => ("memory.events", "oom_kill"),
            _ => ("pids.events", "max"),
        };
        let text = std::fs::read_to_string(self.path.join(file)).unwrap_or_default();
        event_count(&text, key)
    }

    /// Removes the cgroup; it must be empty (the agent has ended).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The count of `key` in a cgroup `*.events` file (`key N` lines).
pub fn event_count(events: &str, key: &str) -> u64 {
    events
        .lines()
        .find_map(|line| line.split_once(' ').filter(|(k, _)| *k == key).and_then(|(_, n)| n.trim().parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_paths_and_mounts() {
        let cgroup = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(own_path(cgroup, Some("pids")).as_deref(), Some("/"));
        assert_eq!(own_path(cgroup, Some("memory")).as_deref(), Some("/process_api/abc"));
        assert_eq!(own_path(cgroup, None).as_deref(), Some("/"));
        let mountinfo = "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let mounts = mount_points(mountinfo);
        assert_eq!(mounts[0], ("cgroup".into(), PathBuf::from("/sys/fs/cgroup/pids"), "rw,pids".into()));
        assert_eq!(mounts[1].0, "cgroup2");
    }

    #[test]
    fn counts_events() {
        assert_eq!(event_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", "oom_kill"), 1);
        assert_eq!(event_count("max 7\n", "max"), 7);
        assert_eq!(event_count("", "max"), 0);
    }
}
