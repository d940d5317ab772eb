#!/bin/sh
# What the crontab line runs: `corral run` on a run file inside the
# repository, then `corral gc` for runs that ended a week ago.
#
#   corral-nightly.sh REPO [RUN_FILE]    (RUN_FILE relative to REPO; default examples/cron/nightly.toml)
#
# cron gives a job only a short PATH and HOME, no terminal and no standard
# input, and starts it in HOME: this script sets the rest. corral prints
# plain lines when it has no terminal and never waits for input; the report
# is the last thing printed, and the exit code says how the run went.
set -u
repo=${1:?usage: corral-nightly.sh REPO [RUN_FILE]}
file=${2:-examples/cron/nightly.toml}
cd "$repo" || exit 1

# Where `cargo install` puts corral.
PATH="$HOME/.cargo/bin:$PATH"
export PATH
# The agents' API keys (ANTHROPIC_API_KEY=...), if kept in a file of your own.
if [ -f "$HOME/.config/corral/env" ]; then
    set -a
    . "$HOME/.config/corral/env"
    set +a
fi

corral run "$file"
code=$?
case $code in
    0) echo "corral-nightly: every agent succeeded (and merged where it merges)" ;;
    31) echo "corral-nightly: skipped: the last run of this file is still going" ;;
    *) echo "corral-nightly: the run exited $code (README, Exit codes); corral runs lists the runs" ;;
esac
# Worktrees and merged branches of what ended over a week ago.
corral gc --older-than 7d >/dev/null || true
exit "$code"
