#!/bin/sh
# salvage-triage.sh: list a project's salvage entries, classify them by age, suggest claim/dismiss.
# Never dismisses anything unless --dismiss-older-than is given.
set -eu

usage() {
    echo "usage: salvage-triage.sh [-h] [-p PROJECT] [--stale-after DURATION] [--dismiss-older-than DURATION]"
    echo "       durations: 90s, 30m, 2h, 1d (a bare number is seconds); default --stale-after 24h"
}
die() { echo "salvage-triage: $*" >&2; exit 1; }

project=""
stale="24h"
dismiss=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -p|--project) [ $# -ge 2 ] || die "-p needs a project"; project=$2; shift ;;
        --stale-after) [ $# -ge 2 ] || die "--stale-after needs a duration"; stale=$2; shift ;;
        --dismiss-older-than) [ $# -ge 2 ] || die "--dismiss-older-than needs a duration"; dismiss=$2; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

command -v pd >/dev/null 2>&1 || die "pd is not on PATH"
pd status -q >/dev/null 2>&1 || die "daemon is not running (run scripts/preflight.sh or pd start)"

if [ -n "$project" ]; then
    entries=$(pd salvage --project "$project" --json) || die "pd salvage --project $project failed"
else
    entries=$(pd salvage --json) || die "pd salvage failed"
fi

# prints the report on stdout; the agent ids to dismiss on the last line, after "DISMISS:"
report=$(printf '%s' "$entries" | STALE="$stale" DISMISS="$dismiss" python3 -c '
import json, os, re, sys, time

def ms(text, flag):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not m:
        print("bad duration for %s: %r (use 90s, 30m, 2h, 1d)" % (flag, text), file=sys.stderr)
        sys.exit(2)
    unit = {"ms": 1, "s": 1000, None: 1000, "m": 60000, "h": 3600000, "d": 86400000}[m.group(2)]
    return float(m.group(1)) * unit

stale_ms = ms(os.environ["STALE"], "--stale-after")
dismiss_ms = ms(os.environ["DISMISS"], "--dismiss-older-than") if os.environ["DISMISS"] else None
d = json.load(sys.stdin)
now = time.time() * 1000
rows, to_dismiss = [], []
for e in d.get("entries", []):
    age = now - (e.get("diedAt") or now)
    status = e.get("status")
    agent = e.get("agentId")
    if status == "claimed":
        cls, hint = "claimed", "in progress by %s: pd salvage complete %s --as %s" % (e.get("claimedBy"), agent, e.get("claimedBy"))
    elif age >= stale_ms:
        cls, hint = "stale", "pd salvage dismiss %s   (or read it first: pd notes --session %s)" % (agent, e.get("sessionId"))
    elif age < 3600000:
        cls, hint = "fresh", "pd salvage claim %s" % agent
    else:
        cls, hint = "recent", "pd salvage claim %s   (check its notes: pd notes --session %s)" % (agent, e.get("sessionId"))
    if dismiss_ms is not None and status == "pending" and age >= dismiss_ms:
        to_dismiss.append(agent)
    mins = int(age // 60000)
    agetxt = "%dm" % mins if mins < 120 else ("%dh" % (mins // 60) if mins < 2880 else "%dd" % (mins // 1440))
    rows.append((agent, status, agetxt, cls, e.get("purpose") or "-", len(e.get("files") or []), hint))
scope = d.get("project") or "every project"
if not rows:
    print("nothing to salvage in %s" % scope)
else:
    print("%d salvage entr%s in %s (stale after %s):" % (len(rows), "y" if len(rows) == 1 else "ies", scope, os.environ["STALE"]))
    for agent, status, agetxt, cls, purpose, nfiles, hint in rows:
        print("  %-24s %-8s died %-5s ago  %-7s %r, %d file(s)" % (agent, status, agetxt, cls, purpose, nfiles))
        print("      -> %s" % hint)
print("DISMISS:" + " ".join(sorted(set(to_dismiss))))
') || die "could not classify the entries (see the message above)"

printf '%s\n' "$report" | sed '$d'
victims=$(printf '%s\n' "$report" | tail -n 1 | sed 's/^DISMISS://')
if [ -n "$dismiss" ]; then
    if [ -z "$victims" ]; then
        echo "no pending entry is older than $dismiss; nothing dismissed"
    else
        for agent in $victims; do
            pd salvage dismiss "$agent" || die "pd salvage dismiss $agent failed"
        done
    fi
fi
echo "salvage-triage: ok"
