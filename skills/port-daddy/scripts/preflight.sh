#!/bin/sh
# preflight.sh: is Port Daddy usable from here? Daemon up (started if not), doctor, who am I.
set -eu

usage() {
    echo "usage: preflight.sh [-h] [--no-start]   (daemon up? pd doctor summary, pd version, pd whoami)"
}
die() { echo "preflight: $*" >&2; exit 1; }

start=1
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --no-start) start=0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

command -v pd >/dev/null 2>&1 || die "pd is not on PATH (pip install port-daddy, or activate its venv)"
command -v python3 >/dev/null 2>&1 || die "python3 is not on PATH (needed to read pd --json)"

# 1. daemon up? (pd status never starts it; exit 0 only when it runs)
if pd status -q >/dev/null 2>&1; then
    echo "daemon: running"
elif [ "$start" = 1 ]; then
    pd start >/dev/null || die "pd start failed; run pd doctor and read daemon.log in \$PORT_DADDY_HOME"
    pd status -q >/dev/null 2>&1 || die "daemon started but pd status says it is not running"
    echo "daemon: started"
else
    die "daemon is not running (pd start; see examples/06-debug-daemon-down.md)"
fi

# 2. pd doctor, summarised: one line, plus every failing check with its fix
doctor_json=$(pd doctor --json 2>/dev/null) || true
summary=$(printf '%s' "$doctor_json" | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    print("doctor: no answer"); sys.exit(1)
checks = d.get("checks", [])
bad = [c for c in checks if not c.get("ok")]
print("doctor: %d/%d checks ok" % (len(checks) - len(bad), len(checks)))
for c in bad:
    print("  FAIL %s: %s. Fix: %s" % (c.get("check"), c.get("detail"), c.get("fix") or "see pd doctor"))
sys.exit(0 if d.get("ok") and not bad else 1)
') && doctor_ok=1 || doctor_ok=0
echo "$summary"

# 3. versions (CLI and daemon must agree)
pd version

# 4. who am I in this terminal?
pd whoami --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("active") or d.get("sessionId"):
    print("whoami: agent %s, session %s (%s), identity %s" % (
        d.get("agentId"), d.get("sessionId"), d.get("purpose") or "-", d.get("identity") or "-"))
elif d.get("agentId"):
    print("whoami: agent %s, no active session (pd begin \"...\")" % d.get("agentId"))
else:
    print("whoami: no agent in this terminal yet; start with: pd begin \"what you are doing\"")
'

[ "$doctor_ok" = 1 ] || die "pd doctor reports a problem (see FAIL lines above)"
echo "preflight: ok"
