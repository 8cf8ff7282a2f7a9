#!/bin/sh
# session-resume.sh: where was I? This terminal's agent/session, recent notes, claimed files, salvage.
set -eu

usage() {
    echo "usage: session-resume.sh [-h] [-p PROJECT] [-n NOTES]   (pd whoami, notes, file claims, salvage)"
}
die() { echo "session-resume: $*" >&2; exit 1; }

project=""
limit=10
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -p|--project) [ $# -ge 2 ] || die "-p needs a project"; project=$2; shift ;;
        -n|--notes) [ $# -ge 2 ] || die "-n needs a number"; limit=$2; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
case "$limit" in ''|*[!0-9]*) die "-n must be a number, not '$limit'" ;; esac

command -v pd >/dev/null 2>&1 || die "pd is not on PATH"
pd status -q >/dev/null 2>&1 || die "daemon is not running (run scripts/preflight.sh or pd start)"

me=$(pd whoami --json) || die "pd whoami failed"
fields=$(printf '%s' "$me" | python3 -c '
import json, sys
d = json.load(sys.stdin)
ident = d.get("identity") or ""
print(d.get("agentId") or "-", d.get("sessionId") or "-", ident.split(":")[0] if ident else "-")
')
set -- $fields
agent=$1; [ "$agent" != "-" ] || agent=""
session=$2; [ "$session" != "-" ] || session=""
[ -n "$project" ] || [ "$3" = "-" ] || project=$3
if [ -z "$project" ]; then
    # the way pd finds a folder's project: .portdaddyrc's project, else the git root's name, else the folder
    project=$(python3 -c '
import json, pathlib
here = pathlib.Path.cwd()
for d in [here, *here.parents]:
    rc = d / ".portdaddyrc"
    if rc.is_file():
        try:
            print(json.loads(rc.read_text()).get("project") or d.name)
        except ValueError:
            print(d.name)
        break
    if (d / ".git").exists():
        print(d.name)
        break
else:
    print(here.name)
')
fi

echo "== who am I"
pd whoami
if [ -z "$agent" ]; then
    echo "(no agent in this terminal: pd begin \"...\" or eval \"\$(scripts/agent-handshake.sh -i $project ...)\")"
fi

echo
echo "== recent notes"
if [ -n "$session" ]; then
    pd notes --session "$session" -n "$limit"
else
    pd notes --all -n "$limit"
fi

echo
echo "== file claims"
if [ -n "$session" ]; then
    echo "mine ($session):"
    pd session files list --session "$session"
fi
echo "project $project:"
pd session files list --project "$project"

echo
echo "== salvage for $project"
pd salvage --project "$project"
echo
echo "session-resume: ok (project $project)"
