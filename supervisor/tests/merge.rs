//! The merge engine on real repositories: strategies, conflicts, the
//! person's checkout, crash recovery, gates, and the invariant that no
//! commit is ever lost. Each test makes its own repository in a temporary
//! folder; the git CLI checks what git itself sees.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral::git::checkout;
use corral::git::merge::{self, MergeError, MergeOutcome, Opened, Prepared, Recovery, Strategy};
use corral::sys::gate::{self, Gate, GATE_OUTPUT_MAX};
use git2::{Oid, Repository, Signature};

// ---------------------------------------------------------------------------
// Helpers

/// Runs git in `dir` away from the user's configuration; panics on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command(dir, args).output().unwrap();
    assert!(output.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "person")
        .env("GIT_AUTHOR_EMAIL", "person@example.com")
        .env("GIT_COMMITTER_NAME", "person")
        .env("GIT_COMMITTER_EMAIL", "person@example.com");
    command
}

/// A repository whose main worktree has `main` checked out, with one
/// commit holding `files`.
fn repo_with(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    std::fs::create_dir(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    for (name, content) in files {
        write(&path, name, content);
    }
    git(&path, &["add", "-A"]);
    git(&path, &["commit", "-q", "-m", "base"]);
    (dir, path)
}

fn write(root: &Path, name: &str, content: &str) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn read(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name)).unwrap()
}

/// Commits on `branch` (made from `from` if it does not exist) without
/// touching any checkout: `Some(text)` writes a file, `None` deletes it.
fn commit_on(repo: &Path, branch: &str, from: &str, files: &[(&str, Option<&str>)], message: &str) -> Oid {
    let r = Repository::open(repo).unwrap();
    let start = if r.find_branch(branch, git2::BranchType::Local).is_ok() { branch } else { from };
    let parent = r.revparse_single(start).unwrap().peel_to_commit().unwrap();
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, content) in files {
        match content {
            Some(text) => {
                let blob = r.blob(text.as_bytes()).unwrap();
                update.upsert(*path, blob, git2::FileMode::Blob);
            }
            None => {
                update.remove(*path);
            }
        }
    }
    let tree = r.find_tree(update.create_updated(&r, &parent.tree().unwrap()).unwrap()).unwrap();
    let sig = Signature::now("agent", "agent@example.com").unwrap();
    let id = r.commit(None, &sig, &sig, message, &tree, &[&parent]).unwrap();
    r.reference(&format!("refs/heads/{branch}"), id, true, "test").unwrap();
    id
}

fn rev(repo: &Path, spec: &str) -> Oid {
    Oid::from_str(git(repo, &["rev-parse", spec]).trim()).unwrap()
}

fn corral() -> Signature<'static> {
    Signature::now("corral", "corral@example.com").unwrap()
}

fn merge(repo: &Path, branch: &str, strategy: Strategy) -> MergeOutcome {
    merge::merge_branch(repo, branch, "main", strategy, &format!("Merge {branch}"), &corral()).unwrap()
}

/// The person's checkout is exactly HEAD: nothing staged, modified or
/// untracked.
fn assert_clean(worktree: &Path) {
    let status = git(worktree, &["status", "--porcelain", "--untracked-files=all"]);
    assert_eq!(status, "", "git status in {}", worktree.display());
    assert_eq!(git(worktree, &["diff", "HEAD", "--stat"]), "");
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a.canonicalize().unwrap() == b.canonicalize().unwrap()
}

fn count(repo: &Path, args: &[&str]) -> usize {
    let mut all = vec!["rev-list", "--count"];
    all.extend_from_slice(args);
    git(repo, &all).trim().parse().unwrap()
}

// ---------------------------------------------------------------------------
// Many branches

#[test]
fn twenty_branches_editing_different_files_all_merge_with_each_strategy() {
    for strategy in [Strategy::Merge, Strategy::Rebase, Strategy::Squash] {
        let files: Vec<(String, String)> = (0..20).map(|i| (format!("f{i}.txt"), format!("base {i}\n"))).collect();
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let (_dir, repo) = repo_with(&refs);
        let base = rev(&repo, "main");
        let mut messages = Vec::new();
        for i in 0..20 {
            let message = format!("agent {i} edits f{i}.txt");
            commit_on(
                &repo,
                &format!("corral/root/a{i}"),
                "main",
                &[(&format!("f{i}.txt"), Some(&format!("agent {i}\n")))],
                &message,
            );
            messages.push(message);
        }
        for i in 0..20 {
            let before = rev(&repo, "main");
            match merge(&repo, &format!("corral/root/a{i}"), strategy) {
                MergeOutcome::Merged { old, new, commits } => {
                    assert_eq!((old, commits), (before, 1), "{strategy} branch {i}");
                    assert_eq!(rev(&repo, "main"), new);
                }
                other => panic!("{strategy} branch {i}: {other:?}"),
            }
        }
        for i in 0..20 {
            assert_eq!(read(&repo, &format!("f{i}.txt")), format!("agent {i}\n"), "{strategy}");
            assert_eq!(git(&repo, &["show", &format!("main:f{i}.txt")]), format!("agent {i}\n"));
        }
        assert_clean(&repo);
        let range = format!("{base}..main");
        match strategy {
            Strategy::Merge => {
                // The first fast-forwards, as git merge does; the rest are merges.
                assert_eq!(count(&repo, &["--merges", &range]), 19);
                assert_eq!(count(&repo, &["--no-merges", &range]), 20);
                for i in 0..20 {
                    assert!(merge::is_merged(&repo, &format!("corral/root/a{i}"), "main").unwrap());
                }
            }
            Strategy::Rebase => {
                assert_eq!(count(&repo, &["--merges", &range]), 0);
                assert_eq!(count(&repo, &[&range]), 20);
                let log = git(&repo, &["log", "--reverse", "--format=%s", &range]);
                assert_eq!(log.lines().collect::<Vec<_>>(), messages);
                // The first fast-forwards (the target is its base): the
                // agent's own commit; the others are replayed by corral.
                let authors = git(&repo, &["log", "--reverse", "--format=%an/%cn", &range]);
                let expected: Vec<&str> =
                    std::iter::once("agent/agent").chain(std::iter::repeat_n("agent/corral", 19)).collect();
                assert_eq!(authors.lines().collect::<Vec<_>>(), expected);
            }
            Strategy::Squash => {
                assert_eq!(count(&repo, &["--merges", &range]), 0);
                assert_eq!(count(&repo, &[&range]), 20);
                let log = git(&repo, &["log", "--reverse", "--format=%s", &range]);
                let expected: Vec<String> = (0..20).map(|i| format!("Merge corral/root/a{i}")).collect();
                assert_eq!(log.lines().collect::<Vec<_>>(), expected);
                // The branches' own commits are not in main: gc must keep them.
                assert!(!merge::is_merged(&repo, "corral/root/a3", "main").unwrap());
                assert_eq!(merge::unmerged_commits(&repo, "corral/root/a3", "main").unwrap(), 1);
            }
            Strategy::FfOnly => unreachable!(),
        }
    }
}

#[test]
fn ten_branches_editing_the_same_line_first_merges_the_rest_conflict_and_change_nothing() {
    for strategy in [Strategy::Merge, Strategy::Rebase, Strategy::Squash] {
        let (_dir, repo) = repo_with(&[("shared.txt", "one\ntwo\nthree\n"), ("other.txt", "x\n")]);
        let mut tips = Vec::new();
        for i in 0..10 {
            let text = format!("one\nagent {i}\nthree\n");
            tips.push(commit_on(&repo, &format!("corral/root/a{i}"), "main", &[("shared.txt", Some(&text))], "edit"));
        }
        assert!(matches!(merge(&repo, "corral/root/a0", strategy), MergeOutcome::Merged { .. }), "{strategy}");
        let after_first = rev(&repo, "main");
        for (i, tip) in tips.iter().enumerate().skip(1) {
            let outcome = merge(&repo, &format!("corral/root/a{i}"), strategy);
            assert_eq!(outcome, MergeOutcome::Conflict { files: vec!["shared.txt".to_string()] }, "{strategy} {i}");
            assert_eq!(rev(&repo, "main"), after_first, "{strategy}: a conflict moved main");
            assert_eq!(rev(&repo, &format!("corral/root/a{i}")), *tip, "{strategy}: a conflict moved the branch");
        }
        assert_eq!(read(&repo, "shared.txt"), "one\nagent 0\nthree\n");
        assert_clean(&repo);
    }
}

// ---------------------------------------------------------------------------
// The person's checkout

#[test]
fn dirty_checkout_of_the_target_is_left_byte_for_byte() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("agent\n")), ("new.txt", Some("new\n"))], "agent");
    write(&repo, "b.txt", "person's unsaved work\r\n\0binary");
    write(&repo, "c.txt", "staged by the person\n");
    git(&repo, &["add", "c.txt"]);
    write(&repo, "c.txt", "staged, then changed again\n");
    write(&repo, "notes/todo.txt", "untracked\n");
    let main = rev(&repo, "main");
    let before = snapshot(&repo);

    let outcome = merge(&repo, "corral/root/x", Strategy::Merge);
    let MergeOutcome::TargetDirty { worktree, files } = outcome else { panic!("{outcome:?}") };
    assert!(same_dir(&worktree, &repo));
    assert_eq!(files, vec!["b.txt", "c.txt"]);
    assert_eq!(rev(&repo, "main"), main);
    assert_eq!(snapshot(&repo), before);
    assert_eq!(std::fs::read(repo.join("b.txt")).unwrap(), b"person's unsaved work\r\n\0binary");
}

/// Everything the person can see: file bytes, the index, the status.
fn snapshot(repo: &Path) -> (Vec<(String, Vec<u8>)>, String, String) {
    let mut files = Vec::new();
    for entry in walk(repo) {
        let rel = entry.strip_prefix(repo).unwrap().to_string_lossy().into_owned();
        files.push((rel, std::fs::read(&entry).unwrap()));
    }
    files.sort();
    (files, git(repo, &["ls-files", "-s"]), git(repo, &["status", "--porcelain", "--untracked-files=all"]))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == ".git" {
            continue;
        }
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_merge_or_rebase_in_progress_in_the_checkout_counts_as_dirty() {
    for rebase in [false, true] {
        let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n")]);
        commit_on(&repo, "corral/root/x", "main", &[("b.txt", Some("agent\n"))], "agent");
        commit_on(&repo, "other", "main", &[("a.txt", Some("other\n"))], "other");
        write(&repo, "a.txt", "person\n");
        git(&repo, &["commit", "-q", "-am", "person"]);
        let action = if rebase { "rebase" } else { "merge" };
        let stopped = git_command(&repo, &[action, "other"]).output().unwrap();
        assert!(!stopped.status.success(), "the {action} should stop on a conflict");
        let main = rev(&repo, "main");
        let outcome = merge(&repo, "corral/root/x", Strategy::Merge);
        let MergeOutcome::TargetDirty { worktree, files } = outcome else { panic!("{action}: {outcome:?}") };
        assert!(same_dir(&worktree, &repo));
        let note = if rebase { "(a rebase of refs/heads/main is in progress)" } else { "(a merge is in progress)" };
        assert!(files.iter().any(|f| f == note), "{files:?}");
        assert_eq!(rev(&repo, "main"), main);
    }
}

#[test]
fn untracked_or_ignored_file_where_the_merge_writes_counts_as_dirty() {
    for (name, ignored) in [("new.txt", false), ("build/out.bin", true)] {
        let (_dir, repo) = repo_with(&[("a.txt", "a\n"), (".gitignore", "build/\n")]);
        commit_on(&repo, "corral/root/x", "main", &[(name, Some("from the agent\n"))], "agent");
        write(&repo, name, "the person's own\n");
        if ignored {
            assert_eq!(git(&repo, &["status", "--porcelain"]), "", "the file should be ignored");
        }
        let main = rev(&repo, "main");
        let outcome = merge(&repo, "corral/root/x", Strategy::Merge);
        assert!(
            matches!(&outcome, MergeOutcome::TargetDirty { files, .. } if files == &[name.to_string()]),
            "{name}: {outcome:?}"
        );
        assert_eq!(rev(&repo, "main"), main);
        assert_eq!(read(&repo, name), "the person's own\n");
    }
}

#[test]
fn untracked_file_where_a_folder_goes_counts_as_dirty() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("docs/guide.md", Some("guide\n"))], "agent");
    write(&repo, "docs", "a file named docs\n");
    let outcome = merge(&repo, "corral/root/x", Strategy::Merge);
    assert!(matches!(&outcome, MergeOutcome::TargetDirty { files, .. } if files == &["docs/guide.md"]), "{outcome:?}");
    assert_eq!(read(&repo, "docs"), "a file named docs\n");
}

#[test]
fn untracked_files_elsewhere_do_not_block_and_stay() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("agent\n"))], "agent");
    write(&repo, "scratch.txt", "mine\n");
    assert!(matches!(merge(&repo, "corral/root/x", Strategy::Merge), MergeOutcome::Merged { .. }));
    assert_eq!(read(&repo, "a.txt"), "agent\n");
    assert_eq!(read(&repo, "scratch.txt"), "mine\n");
    assert_eq!(git(&repo, &["status", "--porcelain"]), "?? scratch.txt\n");
}

#[test]
fn a_change_in_the_way_since_prepare_is_caught_when_applying() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("agent\n"))], "agent");
    let Prepared::Ready(plan) =
        merge::prepare_merge(&Opened::open(&repo).unwrap(), "corral/root/x", "main", Strategy::Merge, "m", &corral())
            .unwrap()
    else {
        panic!("expected a plan")
    };
    write(&repo, "a.txt", "edited meanwhile\n");
    let outcome = merge::apply_merge(&Opened::open(&repo).unwrap(), &plan).unwrap();
    assert!(matches!(&outcome, MergeOutcome::TargetDirty { files, .. } if files == &["a.txt"]), "{outcome:?}");
    assert_eq!(rev(&repo, "main"), plan.old);
    assert_eq!(read(&repo, "a.txt"), "edited meanwhile\n");
}

#[test]
fn a_change_elsewhere_since_prepare_is_left_as_it_is() {
    // Clean when prepared; the person then edits a file the merge does not
    // write: the merge goes in around it, as `git merge` would.
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("agent\n"))], "agent");
    let Prepared::Ready(plan) =
        merge::prepare_merge(&Opened::open(&repo).unwrap(), "corral/root/x", "main", Strategy::Merge, "m", &corral())
            .unwrap()
    else {
        panic!("expected a plan")
    };
    write(&repo, "b.txt", "edited meanwhile\n");
    let outcome = merge::apply_merge(&Opened::open(&repo).unwrap(), &plan).unwrap();
    assert!(matches!(&outcome, MergeOutcome::Merged { .. }), "{outcome:?}");
    assert_eq!(rev(&repo, "main"), plan.new);
    assert_eq!(read(&repo, "a.txt"), "agent\n");
    assert_eq!(read(&repo, "b.txt"), "edited meanwhile\n");
    assert_eq!(git(&repo, &["status", "--porcelain"]), " M b.txt\n");
}

/// The branch changes, adds, deletes, renames, makes a file executable
/// and adds a symlink; main has a commit of its own, so it is a real merge.
fn varied_branch(repo: &Path) {
    let wt = repo.parent().unwrap().join("agent");
    git(repo, &["worktree", "add", "-q", "-b", "corral/root/x", wt.to_str().unwrap()]);
    write(&wt, "a.txt", "a changed\n");
    std::fs::remove_file(wt.join("b.txt")).unwrap();
    write(&wt, "dir/deep/c.txt", "c\n");
    git(&wt, &["mv", "d.txt", "e.txt"]);
    std::fs::set_permissions(wt.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a.txt", wt.join("link")).unwrap();
    git(&wt, &["add", "-A"]);
    git(&wt, &["commit", "-q", "-m", "agent work"]);
}

#[test]
fn clean_checkout_ends_up_exactly_as_after_git_merge() {
    for fast_forward in [false, true] {
        let (dir, repo) = repo_with(&[
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
            ("d.txt", "d\n"),
            ("run.sh", "echo hi\n"),
            ("z.txt", "z\n"),
        ]);
        varied_branch(&repo);
        if !fast_forward {
            write(&repo, "z.txt", "the person's commit\n");
            git(&repo, &["commit", "-q", "-am", "person"]);
        }
        // The same merge by git itself, in a copy, to compare with.
        let copy = dir.path().join("copy");
        git(dir.path(), &["clone", "-q", "--no-local", repo.to_str().unwrap(), copy.to_str().unwrap()]);
        git(&copy, &["fetch", "-q", "origin", "corral/root/x:corral/root/x"]);
        git(&copy, &["merge", "-q", "--no-edit", "corral/root/x"]);

        let outcome = merge(&repo, "corral/root/x", Strategy::Merge);
        let MergeOutcome::Merged { new, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!(rev(&repo, "HEAD"), new);
        assert_eq!(git(&repo, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");
        assert_eq!(rev(&repo, "HEAD^{tree}"), rev(&copy, "HEAD^{tree}"), "the same tree as git merge");
        if fast_forward {
            assert_eq!(new, rev(&repo, "corral/root/x"));
        } else {
            assert_eq!(git(&repo, &["rev-list", "--parents", "-n1", "HEAD"]).split_whitespace().count(), 3);
        }
        assert_clean(&repo);
        assert_eq!(snapshot(&repo).0, snapshot(&copy).0, "the same files as git merge");
        assert!(!repo.join("b.txt").exists() && !repo.join("d.txt").exists());
        assert_eq!(std::fs::read_link(repo.join("link")).unwrap(), Path::new("a.txt"));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(repo.join("run.sh")).unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111, "run.sh should be executable");
    }
}

#[test]
fn a_file_replacing_a_folder_and_a_folder_replacing_a_file_check_out() {
    let (dir, repo) = repo_with(&[("d/x.txt", "x\n"), ("f", "a file\n")]);
    let wt = dir.path().join("agent");
    git(&repo, &["worktree", "add", "-q", "-b", "corral/root/x", wt.to_str().unwrap()]);
    git(&wt, &["rm", "-q", "d/x.txt", "f"]);
    write(&wt, "d", "now a file\n");
    write(&wt, "f/y.txt", "now a folder\n");
    git(&wt, &["add", "-A"]);
    git(&wt, &["commit", "-q", "-m", "swap"]);
    assert!(matches!(merge(&repo, "corral/root/x", Strategy::Merge), MergeOutcome::Merged { .. }));
    assert_eq!(read(&repo, "d"), "now a file\n");
    assert_eq!(read(&repo, "f/y.txt"), "now a folder\n");
    assert_clean(&repo);
}

#[test]
fn target_checked_out_in_a_linked_worktree_follows_the_merge() {
    let (dir, repo) = repo_with(&[("a.txt", "a\n")]);
    git(&repo, &["checkout", "-q", "-b", "elsewhere"]);
    let person = dir.path().join("person");
    git(&repo, &["worktree", "add", "-q", person.to_str().unwrap(), "main"]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("agent\n"))], "agent");
    let found = checkout::checked_out_in(&repo, "main").unwrap();
    assert_eq!(found.len(), 1);
    assert!(same_dir(&found[0], &person));

    assert!(matches!(merge(&repo, "corral/root/x", Strategy::Merge), MergeOutcome::Merged { .. }));
    assert_eq!(read(&person, "a.txt"), "agent\n");
    assert_clean(&person);
    // The main worktree, on another branch, is untouched.
    assert_eq!(read(&repo, "a.txt"), "a\n");
    assert_clean(&repo);
}

#[test]
fn target_checked_out_nowhere_only_the_ref_moves() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    git(&repo, &["checkout", "-q", "--detach"]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("agent\n"))], "agent");
    assert!(checkout::checked_out_in(&repo, "main").unwrap().is_empty());
    let outcome = merge(&repo, "corral/root/x", Strategy::Squash);
    let MergeOutcome::Merged { new, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(rev(&repo, "main"), new);
    assert_eq!(read(&repo, "a.txt"), "a\n");
    assert_clean(&repo);
}

// ---------------------------------------------------------------------------
// What each strategy promises

#[test]
fn ff_only_moves_the_target_only_forward() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    commit_on(&repo, "corral/root/ahead", "main", &[("b.txt", Some("1\n"))], "one");
    let tip = commit_on(&repo, "corral/root/ahead", "main", &[("b.txt", Some("2\n"))], "two");
    commit_on(&repo, "corral/root/diverged", "main", &[("c.txt", Some("c\n"))], "c");
    git(&repo, &["branch", "corral/root/behind"]);

    let old = rev(&repo, "main");
    assert_eq!(merge(&repo, "corral/root/behind", Strategy::FfOnly), MergeOutcome::UpToDate);
    assert_eq!(merge(&repo, "corral/root/ahead", Strategy::FfOnly), MergeOutcome::Merged { old, new: tip, commits: 2 });
    assert_eq!(rev(&repo, "main"), tip);
    assert_eq!(read(&repo, "b.txt"), "2\n");
    assert_eq!(merge(&repo, "corral/root/diverged", Strategy::FfOnly), MergeOutcome::NotFastForward);
    assert_eq!(rev(&repo, "main"), tip);
    assert_eq!(merge(&repo, "corral/root/ahead", Strategy::FfOnly), MergeOutcome::UpToDate);
    assert_clean(&repo);
}

#[test]
fn merge_fast_forwards_like_git_and_otherwise_makes_a_two_parent_commit() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    let first = commit_on(&repo, "corral/root/one", "main", &[("b.txt", Some("b\n"))], "b");
    let second = commit_on(&repo, "corral/root/two", "main", &[("c.txt", Some("c\n"))], "c");
    let old = rev(&repo, "main");
    assert_eq!(merge(&repo, "corral/root/one", Strategy::Merge), MergeOutcome::Merged { old, new: first, commits: 1 });
    let MergeOutcome::Merged { new, .. } = merge(&repo, "corral/root/two", Strategy::Merge) else { panic!() };
    let commit = Repository::open(&repo).unwrap().find_commit(new).unwrap().parent_ids().collect::<Vec<_>>();
    assert_eq!(commit, vec![first, second]);
    assert_eq!(git(&repo, &["log", "-1", "--format=%s|%an", "main"]).trim(), "Merge corral/root/two|corral");
    assert!(merge::is_merged(&repo, "corral/root/two", "main").unwrap());
    assert_clean(&repo);
}

#[test]
fn rebase_gives_linear_history_with_the_branch_messages() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    for (i, message) in ["first", "second", "third"].iter().enumerate() {
        commit_on(&repo, "corral/root/x", "main", &[(&format!("x{i}.txt"), Some(message))], message);
    }
    let branch_tip = rev(&repo, "corral/root/x");
    write(&repo, "a.txt", "person\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let old = rev(&repo, "main");

    let outcome = merge(&repo, "corral/root/x", Strategy::Rebase);
    let MergeOutcome::Merged { new, commits: 3, .. } = outcome else { panic!("{outcome:?}") };
    assert_ne!(new, branch_tip, "new commits, not the branch's");
    assert_eq!(rev(&repo, "main~3"), old);
    assert_eq!(count(&repo, &["--merges", &format!("{old}..main")]), 0);
    assert_eq!(git(&repo, &["log", "--reverse", "--format=%s", &format!("{old}..main")]), "first\nsecond\nthird\n");
    assert_eq!(rev(&repo, "corral/root/x"), branch_tip, "the branch is kept as it was");
    assert!(!merge::is_merged(&repo, "corral/root/x", "main").unwrap());
    assert_eq!(merge::unmerged_commits(&repo, "corral/root/x", "main").unwrap(), 3);
    assert_eq!(read(&repo, "x2.txt"), "third");
    assert_clean(&repo);
    // Again: everything is in already.
    assert_eq!(merge(&repo, "corral/root/x", Strategy::Rebase), MergeOutcome::UpToDate);
}

#[test]
fn rebase_fast_forwards_a_linear_branch_ahead_of_the_target() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    let tip = commit_on(&repo, "corral/root/x", "main", &[("b.txt", Some("b\n"))], "b");
    let old = rev(&repo, "main");
    assert_eq!(merge(&repo, "corral/root/x", Strategy::Rebase), MergeOutcome::Merged { old, new: tip, commits: 1 });
    assert!(merge::is_merged(&repo, "corral/root/x", "main").unwrap());
}

/// An agent branch that merged a child's branch: `merge_extra` is what the
/// merge commit itself changes on top of its parents (a resolution).
fn branch_with_a_merge(repo: &Path, merge_extra: Option<&str>) {
    commit_on(repo, "corral/root/child", "main", &[("child.txt", Some("child\n"))], "child work");
    commit_on(repo, "corral/root/x", "main", &[("x.txt", Some("x\n"))], "parent work");
    let r = Repository::open(repo).unwrap();
    let ours = r.revparse_single("corral/root/x").unwrap().peel_to_commit().unwrap();
    let theirs = r.revparse_single("corral/root/child").unwrap().peel_to_commit().unwrap();
    let mut index = r.merge_commits(&ours, &theirs, None).unwrap();
    if let Some(text) = merge_extra {
        let blob = r.blob(text.as_bytes()).unwrap();
        let entry = index.get_path(Path::new("x.txt"), 0).unwrap();
        index.add(&git2::IndexEntry { id: blob, ..entry }).unwrap();
    }
    let tree = r.find_tree(index.write_tree_to(&r).unwrap()).unwrap();
    let sig = Signature::now("agent", "agent@example.com").unwrap();
    let id = r.commit(None, &sig, &sig, "merge child", &tree, &[&ours, &theirs]).unwrap();
    r.reference("refs/heads/corral/root/x", id, true, "test").unwrap();
}

#[test]
fn rebase_linearizes_a_branch_with_a_clean_merge() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    branch_with_a_merge(&repo, None);
    write(&repo, "a.txt", "person\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let old = rev(&repo, "main");
    let outcome = merge(&repo, "corral/root/x", Strategy::Rebase);
    assert!(matches!(outcome, MergeOutcome::Merged { commits: 3, .. }), "{outcome:?}");
    assert_eq!(count(&repo, &["--merges", &format!("{old}..main")]), 0);
    assert_eq!(count(&repo, &[&format!("{old}..main")]), 2);
    assert_eq!((read(&repo, "x.txt"), read(&repo, "child.txt")), ("x\n".to_string(), "child\n".to_string()));
}

#[test]
fn rebase_refuses_a_merge_commit_with_changes_of_its_own() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    branch_with_a_merge(&repo, Some("resolved in the merge\n"));
    write(&repo, "a.txt", "person\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let old = rev(&repo, "main");
    let outcome = merge(&repo, "corral/root/x", Strategy::Rebase);
    assert_eq!(outcome, MergeOutcome::RebaseRefused { merges: vec![rev(&repo, "corral/root/x")] });
    assert_eq!(rev(&repo, "main"), old);
    // The merge strategy takes it, resolution included.
    assert!(matches!(merge(&repo, "corral/root/x", Strategy::Merge), MergeOutcome::Merged { .. }));
    assert_eq!(read(&repo, "x.txt"), "resolved in the merge\n");
}

#[test]
fn squash_gives_exactly_one_commit_with_all_the_changes() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    for i in 0..4 {
        commit_on(&repo, "corral/root/x", "main", &[(&format!("s{i}.txt"), Some("s\n"))], &format!("step {i}"));
    }
    write(&repo, "a.txt", "person\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let old = rev(&repo, "main");
    let outcome = merge(&repo, "corral/root/x", Strategy::Squash);
    let MergeOutcome::Merged { new, commits: 4, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(count(&repo, &[&format!("{old}..main")]), 1);
    assert_eq!(rev(&repo, "main^"), old);
    assert_eq!(rev(&repo, "main"), new);
    assert_eq!(git(&repo, &["diff", "--name-only", &format!("{old}"), "main"]), "s0.txt\ns1.txt\ns2.txt\ns3.txt\n");
    assert!(!merge::is_merged(&repo, "corral/root/x", "main").unwrap());
    assert_eq!(merge(&repo, "corral/root/x", Strategy::Squash), MergeOutcome::UpToDate);
    assert_clean(&repo);
}

// ---------------------------------------------------------------------------
// No commit is ever lost

#[test]
fn every_commit_stays_reachable_from_the_target_or_a_kept_branch_over_a_mixed_run() {
    let (_dir, repo) = repo_with(&[("shared.txt", "one\ntwo\n"), ("a.txt", "a\n")]);
    let strategies = [Strategy::Merge, Strategy::Rebase, Strategy::Squash, Strategy::FfOnly];
    let mut branches = Vec::new();
    for i in 0..16 {
        let name = format!("corral/root/m{i}");
        let commits = 1 + i % 3;
        for c in 0..commits {
            let file = if i % 5 == 2 { "shared.txt".to_string() } else { format!("m{i}.txt") };
            let text = format!("one\nagent {i} commit {c}\n");
            commit_on(&repo, &name, "main", &[(&file, Some(&text))], &format!("m{i} c{c}"));
        }
        branches.push((name, strategies[i % 4]));
    }
    branch_with_a_merge(&repo, Some("resolution\n"));
    branches.push(("corral/root/x".to_string(), Strategy::Rebase));
    branches.push(("corral/root/child".to_string(), Strategy::Squash));

    let everything: HashSet<String> = git(&repo, &["rev-list", "--all"]).lines().map(str::to_string).collect();
    let mut kinds = HashSet::new();
    for (name, strategy) in &branches {
        let outcome = merge(&repo, name, *strategy);
        kinds.insert(std::mem::discriminant(&outcome));
        let own_file = format!("{}.txt", name.rsplit('/').next().unwrap());
        if matches!(outcome, MergeOutcome::Merged { .. }) && name.contains("/m") && repo.join(&own_file).exists() {
            assert!(read(&repo, &own_file).starts_with("one\nagent"), "{name}");
        }
        assert_clean(&repo);
    }
    assert!(kinds.len() >= 4, "the run should mix merged, conflict, not-fast-forward and refused");

    // What gc would do: delete what is merged, keep the rest.
    let mut kept = Vec::new();
    let mut deleted = 0;
    for (name, _) in &branches {
        if merge::is_merged(&repo, name, "main").unwrap() {
            git(&repo, &["branch", "-D", "-q", name]);
            deleted += 1;
        } else {
            assert!(merge::unmerged_commits(&repo, name, "main").unwrap() > 0);
            kept.push(name.as_str());
        }
    }
    assert!(deleted > 0 && !kept.is_empty());
    let mut args = vec!["rev-list", "main"];
    args.extend(kept.iter());
    let reachable: HashSet<String> = git(&repo, &args).lines().map(str::to_string).collect();
    let lost: Vec<_> = everything.difference(&reachable).collect();
    assert!(lost.is_empty(), "commits lost: {lost:?}");
}

// ---------------------------------------------------------------------------
// Races and crashes

#[test]
fn target_moved_between_compute_and_update_is_reported_not_overwritten() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("b.txt", Some("b\n"))], "agent");
    let Prepared::Ready(plan) =
        merge::prepare_merge(&Opened::open(&repo).unwrap(), "corral/root/x", "main", Strategy::Squash, "m", &corral())
            .unwrap()
    else {
        panic!("expected a plan")
    };
    write(&repo, "a.txt", "the person committed meanwhile\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let moved = rev(&repo, "main");

    let err = merge::apply_merge(&Opened::open(&repo).unwrap(), &plan).unwrap_err();
    assert!(
        matches!(&err, MergeError::TargetMoved { expected, found, .. } if *expected == plan.old && *found == Some(moved)),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing was overwritten"), "{err}");
    assert_eq!(rev(&repo, "main"), moved);
    assert_clean(&repo);
    // Computed again, it goes in on top.
    assert!(
        matches!(merge(&repo, "corral/root/x", Strategy::Squash), MergeOutcome::Merged { old, .. } if old == moved)
    );
    assert_eq!(read(&repo, "a.txt"), "the person committed meanwhile\n");
}

fn plan_for(repo: &Path) -> merge::MergePlan {
    commit_on(
        repo,
        "corral/root/x",
        "main",
        &[("a.txt", Some("agent a\n")), ("b.txt", None), ("c.txt", Some("agent c\n")), ("n/new.txt", Some("n\n"))],
        "agent",
    );
    match merge::prepare_merge(&Opened::open(repo).unwrap(), "corral/root/x", "main", Strategy::Merge, "m", &corral())
        .unwrap()
    {
        Prepared::Ready(plan) => plan,
        other => panic!("{other:?}"),
    }
}

#[test]
fn recover_before_the_ref_moved_says_not_applied() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]);
    let plan = plan_for(&repo);
    assert_eq!(merge::recover(&repo, "main", plan.old, plan.new).unwrap(), Recovery::NotApplied);
    assert_eq!(rev(&repo, "main"), plan.old);
    assert_clean(&repo);
}

#[test]
fn recover_after_the_ref_moved_finishes_the_checkout_even_half_done() {
    for half_done in [false, true] {
        let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]);
        let plan = plan_for(&repo);
        // The crash: the ref moved, the checkout did not (or only partly).
        git(&repo, &["update-ref", "refs/heads/main", &plan.new.to_string(), &plan.old.to_string()]);
        if half_done {
            write(&repo, "a.txt", "agent a\n");
            write(&repo, "n/new.txt", "n\n");
            std::fs::remove_file(repo.join("b.txt")).unwrap();
        }
        assert_ne!(git(&repo, &["status", "--porcelain"]), "");
        assert_eq!(merge::recover(&repo, "main", plan.old, plan.new).unwrap(), Recovery::Applied);
        assert_eq!(rev(&repo, "main"), plan.new);
        assert_eq!((read(&repo, "a.txt"), read(&repo, "c.txt")), ("agent a\n".into(), "agent c\n".into()));
        assert!(!repo.join("b.txt").exists());
        assert_clean(&repo);
        // Again: nothing left to do.
        assert_eq!(merge::recover(&repo, "main", plan.old, plan.new).unwrap(), Recovery::Applied);
        assert_clean(&repo);
    }
}

#[test]
fn recover_leaves_the_persons_own_edits_alone() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]);
    let plan = plan_for(&repo);
    git(&repo, &["update-ref", "refs/heads/main", &plan.new.to_string(), &plan.old.to_string()]);
    write(&repo, "c.txt", "the person's edit\n");
    let recovery = merge::recover(&repo, "main", plan.old, plan.new).unwrap();
    let Recovery::CheckoutBlocked { worktree, files } = recovery else { panic!("{recovery:?}") };
    assert!(same_dir(&worktree, &repo));
    assert_eq!(files, vec!["c.txt"]);
    assert_eq!(read(&repo, "c.txt"), "the person's edit\n");
    assert_eq!(read(&repo, "a.txt"), "a\n", "nothing written when blocked");
}

#[test]
fn recover_when_the_target_moved_elsewhere_does_nothing() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]);
    let plan = plan_for(&repo);
    write(&repo, "a.txt", "person\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let moved = rev(&repo, "main");
    assert_eq!(merge::recover(&repo, "main", plan.old, plan.new).unwrap(), Recovery::Moved { current: Some(moved) });
    assert_clean(&repo);
}

// ---------------------------------------------------------------------------
// Gates

#[test]
fn gate_that_passes_gives_its_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("here.txt"), "").unwrap();
    let result = gate::run_gate(
        dir.path(),
        &Gate::Shell("ls; echo out; echo err >&2".into()),
        None,
        Duration::from_secs(20),
        "test",
    );
    assert!(result.passed && !result.timed_out, "{result:?}");
    assert_eq!(result.code, Some(0));
    assert_eq!(result.output, "here.txt\nout\nerr\n", "runs in the folder, stdout and stderr together");
}

#[test]
fn gate_that_fails_gives_its_code_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let result = gate::run_gate(
        dir.path(),
        &Gate::Shell("echo 'test x failed' >&2; exit 3".into()),
        None,
        Duration::from_secs(20),
        "test",
    );
    assert!(!result.passed && !result.timed_out);
    assert_eq!(result.code, Some(3));
    assert_eq!(result.output, "test x failed\n");
    let argv = gate::run_gate(dir.path(), &Gate::Argv(vec!["false".into()]), None, Duration::from_secs(20), "test");
    assert_eq!((argv.passed, argv.code), (false, Some(1)));
}

#[test]
fn gate_that_cannot_start_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let result =
        gate::run_gate(dir.path(), &Gate::Argv(vec!["/no/such/gate".into()]), None, Duration::from_secs(5), "test");
    assert!(!result.passed && result.code.is_none());
    assert!(result.output.contains("/no/such/gate"), "{}", result.output);
    let empty = gate::run_gate(dir.path(), &Gate::Argv(vec![]), None, Duration::from_secs(5), "test");
    assert!(!empty.passed && empty.output.contains("empty"));
}

#[test]
fn gate_that_runs_out_of_time_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; echo started; wait", pidfile.display());
    let start = Instant::now();
    let result = gate::run_gate(dir.path(), &Gate::Shell(script), None, Duration::from_millis(500), "test");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert!(!result.passed && result.timed_out && result.code.is_none(), "{result:?}");
    assert!(result.output.starts_with("started\n"), "{}", result.output);
    assert!(result.output.contains("ran out of time"), "{}", result.output);
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(gone(pid), "the gate's child {pid} survived");
}

#[test]
fn gate_leftovers_in_its_group_are_killed_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 300 > /dev/null 2>&1 & echo $! > {}", pidfile.display());
    let result = gate::run_gate(dir.path(), &Gate::Shell(script), None, Duration::from_secs(20), "test");
    assert!(result.passed, "{result:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(gone(pid), "the gate's leftover {pid} survived");
}

/// Dead or a zombie, within a few seconds.
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) => {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn gate_output_keeps_the_last_part() {
    let dir = tempfile::tempdir().unwrap();
    let script = "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done";
    let result = gate::run_gate(dir.path(), &Gate::Shell(script.into()), None, Duration::from_secs(60), "test");
    assert!(result.passed);
    assert!(result.output.len() <= GATE_OUTPUT_MAX + 100, "{}", result.output.len());
    assert!(result.output.ends_with("line 19999\n"));
    assert!(result.output.starts_with("[corral: "), "{}", &result.output[..80]);
}

// ---------------------------------------------------------------------------
// Leftovers and diff

#[test]
fn commit_leftovers_commits_changes_and_untracked_files_but_not_ignored_ones() {
    let (dir, repo) = repo_with(&[("a.txt", "a\n"), ("gone.txt", "g\n"), (".gitignore", "*.log\n")]);
    let wt = dir.path().join("agent");
    git(&repo, &["worktree", "add", "-q", "-b", "corral/root/x", wt.to_str().unwrap()]);
    let base = rev(&repo, "corral/root/x");
    assert_eq!(merge::commit_leftovers(&wt, "corral/root/x", ("corral", "corral@example.com"), "m").unwrap(), None);

    write(&wt, "a.txt", "changed\n");
    std::fs::remove_file(wt.join("gone.txt")).unwrap();
    write(&wt, "src/new.rs", "fn main() {}\n");
    write(&wt, "debug.log", "ignored\n");
    let message = "corral: leftovers of /root/x (task t-7: add a health endpoint)";
    let id = merge::commit_leftovers(&wt, "corral/root/x", ("corral", "corral@example.com"), message).unwrap().unwrap();
    assert_eq!(rev(&repo, "corral/root/x"), id);
    assert_eq!(rev(&repo, "corral/root/x^"), base);
    assert_eq!(
        git(&repo, &["log", "-1", "--format=%B%an <%ae>", "corral/root/x"]).trim(),
        format!("{message}\ncorral <corral@example.com>")
    );
    let changed = git(&repo, &["diff", "--name-status", &base.to_string(), "corral/root/x"]);
    assert_eq!(changed, "M\ta.txt\nD\tgone.txt\nA\tsrc/new.rs\n");
    assert_eq!(git(&wt, &["status", "--porcelain"]), "");
    assert_eq!(read(&wt, "debug.log"), "ignored\n");
    assert_eq!(merge::commit_leftovers(&wt, "corral/root/x", ("corral", "corral@example.com"), message).unwrap(), None);
    assert_eq!(rev(&repo, "main"), base, "only the agent's branch moves");
}

#[test]
fn commit_leftovers_refuses_a_detached_head() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n")]);
    git(&repo, &["checkout", "-q", "--detach"]);
    write(&repo, "a.txt", "changed\n");
    let err = merge::commit_leftovers(&repo, "main", ("c", "c@example.com"), "m").unwrap_err();
    assert!(matches!(err, MergeError::Detached { .. }), "{err:?}");
    assert_eq!(read(&repo, "a.txt"), "changed\n");
}

#[test]
fn commit_leftovers_commits_on_the_agents_branch_alone_whatever_its_worktree_says() {
    let (dir, repo) = repo_with(&[("a.txt", "a\n")]);
    let wt = dir.path().join("agent");
    git(&repo, &["worktree", "add", "-q", "-b", "corral/root/x", wt.to_str().unwrap()]);
    let main = rev(&repo, "main");
    let leftover = |what: &str| {
        write(&wt, "a.txt", &format!("{what}\n"));
        merge::commit_leftovers(&wt, "corral/root/x", ("c", "c@example.com"), "m").unwrap_err()
    };
    // The agent points its worktree's HEAD at main.
    let admin = PathBuf::from(git(&wt, &["rev-parse", "--absolute-git-dir"]).trim());
    std::fs::write(admin.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    let err = leftover("head moved");
    assert!(matches!(&err, MergeError::NotItsBranch { why, .. } if why.contains("refs/heads/main")), "{err:?}");
    std::fs::write(admin.join("HEAD"), "ref: refs/heads/corral/root/x\n").unwrap();
    // Its branch made a symbolic ref to main.
    git(&repo, &["symbolic-ref", "refs/heads/corral/root/x", "refs/heads/main"]);
    let err = leftover("symbolic");
    assert!(matches!(&err, MergeError::NotItsBranch { why, .. } if why.contains("refs/heads/main")), "{err:?}");
    git(&repo, &["update-ref", "--no-deref", "refs/heads/corral/root/x", &main.to_string()]);
    // Its .git pointed at the main repository.
    std::fs::write(wt.join(".git"), format!("gitdir: {}\n", repo.join(".git").display())).unwrap();
    git(&repo, &["checkout", "-q", "--ignore-other-worktrees", "corral/root/x"]);
    let err = leftover("main repo");
    assert!(matches!(&err, MergeError::NotItsBranch { why, .. } if why.contains("linked worktree")), "{err:?}");
    git(&repo, &["checkout", "-q", "main"]);
    assert_eq!(rev(&repo, "main"), main, "main never moved");
}

#[test]
fn diff_shows_what_the_branch_changed_since_it_left_base() {
    let (_dir, repo) = repo_with(&[("a.txt", "one\ntwo\n"), ("b.txt", "b\n")]);
    commit_on(&repo, "corral/root/x", "main", &[("a.txt", Some("one\ntwo\nthree\n")), ("c.txt", Some("c\n"))], "x");
    // main moves on afterwards: that is not the agent's change.
    write(&repo, "b.txt", "person\n");
    git(&repo, &["commit", "-q", "-am", "person"]);
    let patch = merge::diff(&repo, "corral/root/x", "main").unwrap();
    let expected = git(&repo, &["diff", "main...corral/root/x"]);
    assert_eq!(patch, expected);
    assert!(patch.contains("diff --git a/a.txt b/a.txt") && patch.contains("\n+three\n"), "{patch}");
    assert!(!patch.contains("b.txt"), "{patch}");
    assert!(matches!(merge::diff(&repo, "corral/root/nope", "main"), Err(MergeError::NoBranch { .. })));
}

fn merge_with(opened: &Opened, branch: &str) -> MergeOutcome {
    let prepared = merge::prepare_merge(opened, branch, "main", Strategy::Merge, "m", &corral()).unwrap();
    match merge::with_changes(prepared, merge::checkout_changes(opened, "main").unwrap()) {
        Prepared::Ready(plan) => merge::apply_merge(opened, &plan).unwrap(),
        Prepared::Finished(outcome) => outcome,
    }
}

/// The merge worker keeps one repository open for all its merges: what
/// the person does with git in between (a commit, an edit, a revert, an
/// untracked file in the way) is seen by the next merge.
#[test]
fn a_kept_repository_sees_what_the_person_did_between_merges() {
    let (_dir, repo) = repo_with(&[("a.txt", "a\n"), ("dir/b.txt", "b\n")]);
    commit_on(&repo, "one", "main", &[("one.txt", Some("1\n"))], "one");
    commit_on(&repo, "two", "main", &[("two.txt", Some("2\n"))], "two");
    commit_on(&repo, "three", "main", &[("dir/three.txt", Some("3\n"))], "three");

    let opened = Opened::open(&repo).unwrap();
    assert!(matches!(merge_with(&opened, "one"), MergeOutcome::Merged { .. }));
    assert_eq!(read(&repo, "one.txt"), "1\n");
    assert_clean(&repo);

    // The person commits on main, then leaves an edit uncommitted.
    write(&repo, "a.txt", "a, the person's\n");
    git(&repo, &["commit", "-q", "-am", "the person's commit"]);
    let theirs = rev(&repo, "HEAD");
    write(&repo, "dir/b.txt", "b, unsaved\n");
    match merge_with(&opened, "two") {
        MergeOutcome::TargetDirty { files, .. } => assert_eq!(files, ["dir/b.txt"]),
        other => panic!("merged over an uncommitted edit: {other:?}"),
    }
    assert_eq!(rev(&repo, "HEAD"), theirs, "main moved");
    assert_eq!(read(&repo, "dir/b.txt"), "b, unsaved\n");

    // Reverted: the merge goes on top of the person's commit.
    git(&repo, &["checkout", "-q", "--", "dir/b.txt"]);
    assert!(matches!(merge_with(&opened, "two"), MergeOutcome::Merged { .. }));
    git(&repo, &["merge-base", "--is-ancestor", &theirs.to_string(), "main"]);
    // An untracked file where the next merge writes.
    write(&repo, "dir/three.txt", "mine\n");
    match merge_with(&opened, "three") {
        MergeOutcome::TargetDirty { files, .. } => assert_eq!(files, ["dir/three.txt"]),
        other => panic!("merged over an untracked file: {other:?}"),
    }
    std::fs::remove_file(repo.join("dir/three.txt")).unwrap();
    assert!(matches!(merge_with(&opened, "three"), MergeOutcome::Merged { .. }));
    assert_clean(&repo);
    for (path, text) in
        [("one.txt", "1\n"), ("two.txt", "2\n"), ("dir/three.txt", "3\n"), ("a.txt", "a, the person's\n")]
    {
        assert_eq!(git(&repo, &["show", &format!("main:{path}")]), text, "{path} on main");
        assert_eq!(read(&repo, path), text, "{path} in the checkout");
    }
}
