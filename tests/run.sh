#!/usr/bin/env bash
# Runs all of corral's tests: what a new user runs, and what CI runs.
#
# It installs what the tests need that is not in the repository: the real
# Claude Code and Codex CLIs from npm, at pinned versions, into a cache
# folder outside the repository (tests/install-agent-clis.sh; skipped when
# present). The scripted model server the real CLIs talk to is part of
# corral and started by the tests themselves, on loopback.
#
# Extra arguments go to `cargo test` (e.g. `tests/run.sh foundation`).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(tests/install-agent-clis.sh)"
export CORRAL_CLAUDE_BIN CORRAL_CODEX_BIN

# One build of everything (the e2e tests run the `corral` binary).
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- "$@"
