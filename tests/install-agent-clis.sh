#!/usr/bin/env bash
# Installs the real agent CLIs that corral's tests drive against the scripted
# model server (`corral mock-llm`), pinned versions, into a cache folder
# outside the repository: Claude Code, Codex, Gemini CLI and opencode from
# the npm registry, Aider from PyPI into a Python virtualenv of its own.
#
# Usage:
#   tests/install-agent-clis.sh            # install what is missing, print paths
#   eval "$(tests/install-agent-clis.sh)"  # ... and export them in this shell
#
# Prints, on stdout and nothing else:
#   export CORRAL_CLAUDE_BIN=/.../node_modules/.bin/claude
#   export CORRAL_CODEX_BIN=/.../node_modules/.bin/codex
#   export CORRAL_GEMINI_BIN=/.../node_modules/.bin/gemini
#   export CORRAL_OPENCODE_BIN=/.../node_modules/.bin/opencode
#   export CORRAL_AIDER_BIN=/.../venv/bin/aider
# Progress and npm's own output go to stderr.
#
# Where: ${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}/agent-clis/<package>@<version>
# (the package name with '/' replaced by '+', e.g. @anthropic-ai+claude-code@2.1.328;
# Aider's virtualenv is aider-chat@<version>/venv). The tests look in the
# same place when the CORRAL_*_BIN variables are unset.
#
# Idempotent: a package whose binary answers `--version` with the pinned
# version is left alone (a second run takes about a second). A broken or
# partial install is removed and done again. Works non-interactively (CI=true,
# no stdin): npm never prompts here, and nothing reads stdin.
#
# Overrides: CORRAL_CLAUDE_VERSION, CORRAL_CODEX_VERSION,
# CORRAL_GEMINI_VERSION, CORRAL_OPENCODE_VERSION, CORRAL_AIDER_VERSION (for
# trying another release; the tests were checked against the defaults).
# CORRAL_PYTHON names the Python 3.10+ that makes Aider's virtualenv
# (default python3).
set -euo pipefail

claude_version="${CORRAL_CLAUDE_VERSION:-2.1.328}"
codex_version="${CORRAL_CODEX_VERSION:-0.169.0}"
gemini_version="${CORRAL_GEMINI_VERSION:-0.61.0}"
opencode_version="${CORRAL_OPENCODE_VERSION:-1.18.33}"
aider_version="${CORRAL_AIDER_VERSION:-0.86.2}"
python="${CORRAL_PYTHON:-python3}"
cache_root="${CORRAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/corral}/agent-clis"

log() { printf 'install-agent-clis: %s\n' "$*" >&2; }

command -v npm >/dev/null 2>&1 || {
    log "npm is not on PATH; install Node.js 18+ (e.g. apt-get install nodejs npm)"
    exit 1
}

# install_one PACKAGE VERSION BIN -> prints the binary's path
install_one() {
    local package="$1" version="$2" bin="$3"
    local dir="$cache_root/${package//\//+}@$version"
    local path="$dir/node_modules/.bin/$bin"

    if [[ -x "$path" ]] && "$path" --version </dev/null 2>/dev/null | grep -qF "$version"; then
        log "$package@$version present in $dir"
        printf '%s\n' "$path"
        return 0
    fi

    log "installing $package@$version into $dir (about 400 MB, may take minutes)"
    rm -rf "$dir" "$dir.partial"
    mkdir -p "$dir.partial"
    # A private package.json keeps npm from walking up into some other project.
    printf '{"name":"corral-agent-cli","private":true}\n' >"$dir.partial/package.json"
    if ! CI=true npm install --no-audit --no-fund --no-update-notifier --loglevel=error \
        --prefix "$dir.partial" "$package@$version" </dev/null >&2; then
        log "npm install of $package@$version failed"
        rm -rf "$dir.partial"
        return 1
    fi
    # Installed in a side folder, moved in one step: an interrupted install
    # never looks present.
    mv "$dir.partial" "$dir"

    local got
    if ! got="$("$path" --version </dev/null 2>&1)"; then
        log "$path --version failed: $got"
        return 1
    fi
    if ! grep -qF "$version" <<<"$got"; then
        log "$path --version printed '$got', expected $version"
        return 1
    fi
    log "$package@$version installed: $got"
    printf '%s\n' "$path"
}

# install_aider VERSION -> prints the binary's path. Aider comes from PyPI,
# into a virtualenv inside the cache folder (about 700 MB, a minute or so).
install_aider() {
    local version="$1"
    local dir="$cache_root/aider-chat@$version"
    local path="$dir/venv/bin/aider"

    if [[ -x "$path" ]] && "$path" --version </dev/null 2>/dev/null | grep -qF "$version"; then
        log "aider-chat@$version present in $dir"
        printf '%s\n' "$path"
        return 0
    fi
    command -v "$python" >/dev/null 2>&1 || {
        log "$python is not on PATH; Aider needs Python 3.10+ with venv (e.g. apt-get install python3-venv)"
        return 1
    }

    log "installing aider-chat@$version into $dir (about 700 MB, may take minutes)"
    rm -rf "$dir"
    mkdir -p "$dir"
    # A virtualenv records its own path, so it is made where it stays; it
    # counts as present only once its `aider --version` answers (above), so
    # an interrupted install is done again.
    if ! "$python" -m venv "$dir/venv" </dev/null >&2; then
        log "$python -m venv failed"
        rm -rf "$dir"
        return 1
    fi
    if ! "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "aider-chat==$version" </dev/null >&2; then
        log "pip install of aider-chat==$version failed"
        rm -rf "$dir"
        return 1
    fi

    local got
    if ! got="$("$path" --version </dev/null 2>&1)" || ! grep -qF "$version" <<<"$got"; then
        log "$path --version printed '$got', expected $version"
        rm -rf "$dir"
        return 1
    fi
    log "aider-chat@$version installed: $got"
    printf '%s\n' "$path"
}

mkdir -p "$cache_root"
# One install at a time per cache (parallel test runs may call this together).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$cache_root/.install.lock"
    flock 9
fi
claude_bin="$(install_one @anthropic-ai/claude-code "$claude_version" claude)"
codex_bin="$(install_one @openai/codex "$codex_version" codex)"
gemini_bin="$(install_one @google/gemini-cli "$gemini_version" gemini)"
opencode_bin="$(install_one opencode-ai "$opencode_version" opencode)"
aider_bin="$(install_aider "$aider_version")"

printf 'export CORRAL_CLAUDE_BIN=%q\n' "$claude_bin"
printf 'export CORRAL_CODEX_BIN=%q\n' "$codex_bin"
printf 'export CORRAL_GEMINI_BIN=%q\n' "$gemini_bin"
printf 'export CORRAL_OPENCODE_BIN=%q\n' "$opencode_bin"
printf 'export CORRAL_AIDER_BIN=%q\n' "$aider_bin"
