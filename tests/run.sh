#!/usr/bin/env bash
# Runs all of corral's tests: what a new user runs, and what CI runs.
#
# It installs what the tests need that is not in the repository: the real
# Claude Code, Codex, Gemini CLI and opencode CLIs from npm and Aider from
# PyPI (in a virtualenv), at pinned versions, into a cache folder outside
# the repository (tests/install-agent-clis.sh; skipped when present). The scripted model server the real CLIs talk to is part of
# corral and started by the tests themselves, on loopback.
#
# Extra arguments go to `cargo test` (e.g. `tests/run.sh foundation`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The terminal tests drive corral in a real terminal (tmux) and render the
# man page (man-db, groff): install them from Debian's packages when they
# are missing and we may (root with apt-get); without them those tests say
# they were skipped.
need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v man >/dev/null 2>&1 || need+=(man-db groff-base)
if ((${#need[@]})) && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing ${need[*]}" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } </dev/null >&2 \
        || echo "run.sh: could not install ${need[*]}; the tests that need them will say so" >&2
fi

eval "$(tests/install-agent-clis.sh)"
export CORRAL_CLAUDE_BIN CORRAL_CODEX_BIN CORRAL_GEMINI_BIN CORRAL_OPENCODE_BIN CORRAL_AIDER_BIN

# One build of everything (the e2e tests run the `corral` binary).
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- "$@"
