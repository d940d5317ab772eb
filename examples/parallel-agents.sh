#!/usr/bin/env bash
# Run a few agents in parallel from a script (or cron), wait for all of
# them, and act on how each ended. Run it inside a git repository.
#
#   CORRAL=corral examples/parallel-agents.sh
#
# Uses the built-in scripted agent so it needs no API key; put your real
# agent command after `--` instead.
set -uo pipefail
corral=${CORRAL:-corral}
agent=("$corral" fake-agent)

"$corral" spawn lint  --task "fix lint warnings" -- "${agent[@]}" "progress 3 3; print lint clean"
"$corral" spawn docs  --task "update the docs"   -- "${agent[@]}" "progress 4 3; write docs/notes.md updated; commit 'docs: notes'"
"$corral" spawn flaky --task "a task that fails" -- "${agent[@]}" "progress 2 3; exit 3"

"$corral" wait lint docs flaky --timeout 300
code=$?
case $code in
  0)   echo "all agents succeeded" ;;
  20)  echo "some agent failed:"; "$corral" ps ;;
  21)  echo "some agent was stopped" ;;
  124) echo "timed out; stopping what is left"; "$corral" stop lint; "$corral" stop docs; "$corral" stop flaky ;;
  *)   echo "corral wait exited $code" ;;
esac
"$corral" events | tail -n 5
exit "$code"
