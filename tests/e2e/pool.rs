//! The warm worktree pool (`[supervisor] worktree_pool`, issue 16): a
//! pooled worktree is what a fresh checkout gives (files, index, HEAD),
//! the pool refills after a spawn, a base that moved is never served
//! stale, and what a crash left half-made is cleaned when the daemon
//! starts and never served.

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_e2e::{poll_until, TestRepo, PATIENCE};

fn pool_dir(repo: &TestRepo) -> PathBuf {
    repo.worktree_of("x").with_file_name(".pool")
}

/// Ready entries at `commit`.
fn ready(repo: &TestRepo, commit: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(pool_dir(repo)) else { return 0 };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(commit) && name.ends_with(".ready")
        })
        .count()
}

fn head(repo: &TestRepo) -> String {
    repo.git(&["rev-parse", "HEAD"]).trim().to_string()
}

/// What git says of a worktree: HEAD, the index, the status, the files.
fn describe(path: &Path) -> String {
    let script = "git rev-parse HEAD; git ls-files -s; git status --porcelain --ignored; \
                  find . -path ./.git -prune -o -print | sort | xargs -d '\\n' stat -c '%n %A %s'";
    let out = Command::new("sh").arg("-c").arg(script).current_dir(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn branch_of(path: &Path) -> String {
    let out = Command::new("git").args(["symbolic-ref", "HEAD"]).current_dir(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn wait_done(repo: &TestRepo, address: &str) {
    poll_until(&format!("{address} to end"), PATIENCE, || {
        repo.agent(address)["state"].as_str().is_some_and(|s| s != "running" && s != "pending")
    });
}

#[test]
fn pooled_worktrees_equal_fresh_checkouts_refill_and_follow_the_base() {
    let repo = TestRepo::new();
    // A tree with folders, an executable and a symlink.
    std::fs::create_dir_all(repo.repo.join("src/deep")).unwrap();
    std::fs::write(repo.repo.join("src/deep/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(repo.repo.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::os::unix::fs::symlink("README.md", repo.repo.join("link")).unwrap();
    Command::new("chmod").args(["+x"]).arg(repo.repo.join("run.sh")).status().unwrap();
    std::fs::write(repo.repo.join("corral.toml"), "[supervisor]\nworktree_pool = 2\n").unwrap();
    std::fs::write(repo.repo.join(".gitignore"), "corral.toml\n").unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a tree"]);
    let first = head(&repo);

    repo.corral_ok(&["ps"]); // starts the daemon, which fills the pool
    poll_until("the pool to fill", PATIENCE, || ready(&repo, &first) == 2);
    repo.spawn_fake("a", "print hi");
    let gitdir = std::fs::read_to_string(repo.worktree_of("a").join(".git")).unwrap();
    assert!(gitdir.contains(&format!("/worktrees/{first}-")), "not a pooled worktree: {gitdir}");
    poll_until("the pool to refill", PATIENCE, || ready(&repo, &first) == 2);

    let pooled = repo.worktree_of("a");
    let fresh = repo.path("fresh");
    repo.git(&["worktree", "add", "-q", "-b", "fresh", fresh.to_str().unwrap(), &first]);
    assert_eq!(describe(&pooled), describe(&fresh));
    assert_eq!(branch_of(&pooled), "refs/heads/corral/root/a");
    wait_done(&repo, "/root/a");
    assert_eq!(repo.agent("/root/a")["state"], "succeeded");

    // The base moves: the next spawn gets the new tree, never the pool's
    // old one, and the old entries go.
    std::fs::write(repo.repo.join("README.md"), "# moved\n").unwrap();
    repo.git(&["commit", "-qam", "moved"]);
    let second = head(&repo);
    repo.spawn_fake("b", "print hi");
    assert_eq!(std::fs::read_to_string(repo.worktree_of("b").join("README.md")).unwrap(), "# moved\n");
    assert_eq!(repo.git(&["-C", repo.worktree_of("b").to_str().unwrap(), "rev-parse", "HEAD"]).trim(), second);
    poll_until("the pool to follow the base", PATIENCE, || ready(&repo, &second) == 2 && ready(&repo, &first) == 0);
    wait_done(&repo, "/root/b");

    // A crash while filling: a checkout without its marker. A restarted
    // daemon removes it (folder and git's entry) and never serves it.
    let half = pool_dir(&repo).join(format!("{second}-half"));
    repo.git(&["worktree", "add", "-q", "--detach", half.to_str().unwrap(), &second]);
    let pid = repo.daemon_pid().expect("the daemon runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !corral_e2e::alive(pid));
    repo.corral_ok(&["ps"]);
    poll_until("the half-made entry to be cleaned", PATIENCE, || !half.exists());
    let listed = repo.git(&["worktree", "list", "--porcelain"]);
    assert!(!listed.contains(half.to_str().unwrap()), "{listed}");
    repo.spawn_fake("c", "print hi");
    assert_eq!(describe(&repo.worktree_of("c")), describe(&repo.worktree_of("b")));
}

#[test]
fn without_a_pool_nothing_is_checked_out_ahead_and_a_pool_switched_off_is_emptied() {
    let repo = TestRepo::new();
    std::fs::write(repo.repo.join("corral.toml"), "[supervisor]\nworktree_pool = 1\n").unwrap();
    let commit = head(&repo);
    repo.corral_ok(&["ps"]);
    poll_until("the pool to fill", PATIENCE, || ready(&repo, &commit) == 1);
    // Switched off: read at the next spawn, and the pool's entries go.
    std::fs::write(repo.repo.join("corral.toml"), "").unwrap();
    repo.spawn_fake("a", "print hi");
    poll_until("the pool to empty", PATIENCE, || ready(&repo, &commit) == 0);
    poll_until("its folders to go", PATIENCE, || {
        std::fs::read_dir(pool_dir(&repo)).map(|d| d.count() == 0).unwrap_or(true)
    });
    assert_eq!(repo.git(&["worktree", "list"]).lines().count(), 2, "the main checkout and /root/a");
    wait_done(&repo, "/root/a");
}
