use std::path::{Path, PathBuf};

use super::*;

fn kernel(abi: u32) -> Kernel {
    Kernel {
        landlock_abi: abi,
        simulated: false,
        pids_cgroup: Err("none here".into()),
        memory_cgroup: Err("none here".into()),
    }
}

fn wanted(mode: Option<Sandbox>, network: Option<Network>) -> Wanted {
    Wanted { mode, network, ..Wanted::default() }
}

#[test]
fn memory_sizes_read_as_people_write_them() {
    assert_eq!(parse_bytes("512M"), Ok(512 << 20));
    assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
    assert_eq!(parse_bytes("2G"), Ok(2 << 30));
    assert_eq!(parse_bytes("1.5gb"), Ok(3 << 29));
    assert_eq!(parse_bytes("4096"), Ok(4096));
    assert!(parse_bytes("lots").unwrap_err().contains("not a memory size"));
    assert!(parse_bytes("3Q").unwrap_err().contains("unknown unit"));
    assert!(parse_bytes("0").is_err());
    assert_eq!(show_bytes(64 << 20), "64 MiB");
    assert_eq!(show_bytes(3 << 29), "1.5 GiB");
    assert_eq!(show_bytes(100), "100 bytes");
}

#[test]
fn a_childs_limits_are_its_parents_or_smaller() {
    let parent = Limits { max_memory: Some(1 << 30), max_processes: Some(100), max_open_files: None };
    let inherited = Limits::default().within(&parent).unwrap();
    assert_eq!(inherited, parent);
    let smaller = Limits { max_memory: Some(1 << 20), ..Limits::default() }.within(&parent).unwrap();
    assert_eq!(smaller.max_memory, Some(1 << 20));
    assert_eq!(smaller.max_processes, Some(100));
    let err = Limits { max_processes: Some(500), ..Limits::default() }.within(&parent).unwrap_err();
    assert_eq!(err, "it asks for max_processes 500 but its parent's is 100");
    // A limit the parent does not have is the child's own.
    let files = Limits { max_open_files: Some(64), ..Limits::default() }.within(&parent).unwrap();
    assert_eq!(files.max_open_files, Some(64));
}

#[test]
fn a_kernel_without_what_is_asked_refuses_or_warns() {
    let err = resolve(&wanted(Some(Sandbox::WorkspaceWrite), None), &kernel(0)).unwrap_err();
    assert!(
        err.contains("the workspace-write sandbox needs Landlock ABI 3 or later, and this kernel has no Landlock"),
        "{err}"
    );
    assert!(err.contains("sandbox_fallback = \"warn\""), "{err}");
    let err = resolve(&wanted(None, Some(Network::None)), &kernel(3)).unwrap_err();
    assert!(
        err.contains("--network none needs Landlock ABI 4 or later (TCP rules), and this kernel has Landlock ABI 3"),
        "{err}"
    );

    let warn = Wanted { fallback: Fallback::Warn, ..wanted(Some(Sandbox::ReadOnly), Some(Network::None)) };
    let enforced = resolve(&warn, &kernel(3)).unwrap();
    assert_eq!(enforced.filesystem, Some(Sandbox::ReadOnly));
    assert_eq!(enforced.network, Some(Network::Full));
    assert_eq!(enforced.landlock_abi, 3);
    assert_eq!(enforced.not_enforced.len(), 1, "{enforced:?}");
    assert_eq!(enforced.summary(), "read-only!");
}

#[test]
fn a_capable_kernel_enforces_files_network_scopes_and_limits() {
    let asked = Wanted {
        limits: Limits { max_memory: Some(64 << 20), max_processes: None, max_open_files: Some(256) },
        proxy_port: Some(4000),
        ..wanted(Some(Sandbox::WorkspaceWrite), Some(Network::Model))
    };
    let enforced = resolve(&asked, &kernel(9)).unwrap();
    assert_eq!(enforced.landlock_abi, MAX_ABI, "rules are written for the newest ABI corral knows");
    assert_eq!(enforced.filesystem, Some(Sandbox::WorkspaceWrite));
    assert_eq!(enforced.network, Some(Network::Model));
    assert_eq!(enforced.connect_ports, vec![4000]);
    assert!(enforced.scoped);
    assert_eq!(enforced.summary(), "workspace-write net:model");
    let by: Vec<&str> = enforced.limits.iter().map(|l| l.by.as_str()).collect();
    assert_eq!(by, ["RLIMIT_AS (the address space of each process)", "RLIMIT_NOFILE"]);
    // max_processes without a pids cgroup cannot be enforced.
    let processes = Wanted { limits: Limits { max_processes: Some(10), ..Limits::default() }, ..Wanted::default() };
    assert!(resolve(&processes, &kernel(7)).unwrap_err().contains("max_processes needs a pids cgroup"));
    // Nothing asked: nothing enforced, no Landlock.
    let nothing = resolve(&Wanted::default(), &kernel(7)).unwrap();
    assert_eq!((nothing.landlock_abi, nothing.restricts()), (0, false));
    assert_eq!(nothing.summary(), "full");
}

#[test]
fn a_workspace_write_plan_writes_where_git_needs_and_no_further() {
    let enforced = resolve(&wanted(Some(Sandbox::WorkspaceWrite), Some(Network::None)), &kernel(7)).unwrap();
    let paths = AgentPaths {
        worktree: "/w/api".into(),
        git_common: "/r/.git".into(),
        git_admin: "/r/.git/worktrees/api".into(),
        branch: "corral/root/api/work".into(),
        tmp: "/r/.git/corral/agents/1/tmp".into(),
        state: "/r/.git/corral/agents/1/home".into(),
    };
    let plan = Plan::for_agent(&enforced, Some(&paths), &kernel(7), "corral-x-1");
    let write: Vec<&Path> = plan.write.iter().map(PathBuf::as_path).collect();
    assert_eq!(
        write,
        [
            Path::new("/r/.git/corral/agents/1/tmp"),
            Path::new("/r/.git/corral/agents/1/home"),
            Path::new("/w/api"),
            Path::new("/r/.git/objects"),
            Path::new("/r/.git/worktrees/api"),
            Path::new("/r/.git/refs/heads/corral/root/api"),
            Path::new("/r/.git/logs/refs/heads/corral/root/api"),
        ]
    );
    assert!(plan.filesystem && plan.network && plan.connect_ports.is_empty());
    let read_only = resolve(&wanted(Some(Sandbox::ReadOnly), None), &kernel(7)).unwrap();
    let plan = Plan::for_agent(&read_only, Some(&paths), &kernel(7), "corral-x-1");
    assert_eq!(plan.write.len(), 2, "only its temporary and state folders: {:?}", plan.write);
    assert!(!plan.network);
}

#[test]
fn denied_paths_are_left_out_of_what_may_be_read() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    for dir in ["home/.ssh", "home/code", "home/.config", "other"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::write(home.join("notes.txt"), "x").unwrap();
    // A link into a denied folder is not a way in.
    std::os::unix::fs::symlink(home.join(".ssh"), home.join("keys")).unwrap();
    let deny = [home.join(".ssh"), home.join(".aws")];
    let (read, list) = apply::read_roots(&deny);
    let home = home.canonicalize().unwrap();
    assert!(read.contains(&home.join("code")) && read.contains(&home.join("notes.txt")), "{read:?}");
    assert!(read.contains(&home.join(".config")));
    assert!(!read.iter().any(|p| p.starts_with(home.join(".ssh")) || p == &home.join("keys")), "{read:?}");
    assert!(!read.contains(&home), "the home folder is on the way: listed, not read whole");
    assert!(list.contains(&home) && list.contains(&PathBuf::from("/")), "{list:?}");
    assert!(read.contains(&PathBuf::from("/usr")), "the rest of the machine stays readable");
    // Nothing to deny: read everything.
    assert_eq!(apply::read_roots(&[]), (vec![PathBuf::from("/")], Vec::new()));
}

#[test]
fn a_limit_is_told_from_the_cgroups_or_from_how_the_agent_ended() {
    let plan = Plan { max_memory: Some(64 << 20), rlimit_as: Some(64 << 20), ..Plan::default() };
    let none = Counters::default();
    let hit =
        limit_hit(&plan, None, Some(libc::SIGABRT), none, b"memory allocation of 1048576 bytes failed\n").unwrap();
    assert_eq!(hit.limit, LimitKind::MaxMemory);
    assert_eq!(
        hit.describe(),
        "max_memory 64 MiB (killed by signal 6 after: memory allocation of 1048576 bytes failed)"
    );
    let said = limit_hit(&plan, Some(1), None, none, b"Traceback...\r\nMemoryError\r\n").unwrap();
    assert_eq!(said.how, "MemoryError");
    assert_eq!(limit_hit(&plan, Some(1), None, none, b"error: no such file\n"), None, "an ordinary failure");
    assert_eq!(limit_hit(&plan, Some(0), None, none, b"out of memory\n"), None, "a success is no limit");
    let cgroup = Plan { max_memory: Some(1 << 30), ..Plan::default() };
    let killed =
        limit_hit(&cgroup, None, Some(libc::SIGKILL), Counters { oom_kills: 1, pids_refused: 0 }, b"").unwrap();
    assert!(killed.how.contains("killed 1 of its processes for memory"), "{killed:?}");
    assert_eq!(limit_hit(&cgroup, None, Some(libc::SIGSEGV), none, b""), None, "no address-space limit, no guess");
}

#[test]
fn the_spawned_event_keeps_the_sandbox_beside_its_old_key() {
    use crate::model::event::{Event, EventBody};
    let old = r#"{"v":1,"seq":1,"ts":"2026-11-21T10:00:00Z","agent":"/root/a","type":"spawned","id":1,
        "task_text":"t","command":["true"],"branch":"corral/root/a","worktree":"/w","base":"abc","sandbox":"read-only"}"#;
    let event: Event = serde_json::from_str(old).unwrap();
    let EventBody::Spawned { sandbox, .. } = &event.body else { panic!("{event:?}") };
    assert_eq!(sandbox.as_ref().and_then(|s| s.mode), Some(Sandbox::ReadOnly));

    let mut event = event;
    let enforced = resolve(&wanted(Some(Sandbox::WorkspaceWrite), Some(Network::None)), &kernel(7)).unwrap();
    if let EventBody::Spawned { sandbox, .. } = &mut event.body {
        *sandbox = Some(SandboxSpec {
            mode: Some(Sandbox::WorkspaceWrite),
            network: Some(Network::None),
            limits: Limits { max_memory: Some(1 << 30), ..Limits::default() },
            enforced: Some(enforced),
        });
    }
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["sandbox"], "workspace-write");
    assert_eq!(json["network"], "none");
    assert_eq!(json["limits"]["max_memory"], 1 << 30);
    assert_eq!(json["enforced"]["landlock_abi"], 7);
    let back: Event = serde_json::from_value(json).unwrap();
    assert_eq!(back, event);
}

#[test]
fn home_is_expanded_and_relative_paths_are_dropped() {
    let home = Path::new("/home/u");
    assert_eq!(expand_home("~/.ssh", Some(home)), Some(PathBuf::from("/home/u/.ssh")));
    assert_eq!(expand_home("/etc/shadow", None), Some(PathBuf::from("/etc/shadow")));
    assert_eq!(expand_home("~/.ssh", None), None);
    assert_eq!(expand_home("relative", Some(home)), None);
}
