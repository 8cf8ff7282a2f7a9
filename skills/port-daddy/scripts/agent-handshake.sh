#!/bin/sh
# agent-handshake.sh: begin a session, claim the identity's port, say hello on a channel, print exports.
#   eval "$(scripts/agent-handshake.sh -i myapp:api:main -p 'Building auth')"
# stdout carries only export lines (for eval); everything else goes to stderr.
set -eu

usage() {
    echo "usage: agent-handshake.sh [-h] -i IDENTITY [-p PURPOSE] [-a AGENT] [-t TYPE] [-c CHANNEL]"
    echo "       CHANNEL defaults to <project>:agents; prints export PORT_DADDY_AGENT=... PORT_DADDY_SESSION=... PORT=..."
}
die() { echo "agent-handshake: $*" >&2; exit 1; }

identity=""
purpose=""
agent=""
atype=""
channel=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -i|--identity) [ $# -ge 2 ] || die "-i needs an identity"; identity=$2; shift ;;
        -p|--purpose) [ $# -ge 2 ] || die "-p needs a purpose"; purpose=$2; shift ;;
        -a|--agent) [ $# -ge 2 ] || die "-a needs an agent id"; agent=$2; shift ;;
        -t|--type) [ $# -ge 2 ] || die "-t needs a type"; atype=$2; shift ;;
        -c|--channel) [ $# -ge 2 ] || die "-c needs a channel"; channel=$2; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[ -n "$identity" ] || { usage >&2; die "-i IDENTITY is required (project:stack:context, e.g. myapp:api:main)"; }
[ -n "$purpose" ] || purpose="Working on $identity"
project=${identity%%:*}
[ -n "$channel" ] || channel="$project:agents"
command -v pd >/dev/null 2>&1 || die "pd is not on PATH"

# 1. register + session (pd begin is atomic: agent, session and salvage hint in one step)
set -- begin "$purpose" --identity "$identity" --json
[ -z "$agent" ] || set -- "$@" --agent "$agent"
[ -z "$atype" ] || set -- "$@" --type "$atype"
begun=$(pd "$@") || die "pd begin failed (see above; an active session? pd done, or pd begin --force)"
ids=$(printf '%s' "$begun" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["agentId"], d["sessionId"])
if d.get("salvageHint"):
    print("salvage: %s" % d["salvageHint"], file=sys.stderr)
') || die "could not read pd begin --json"
set -- $ids
agent=$1
session=$2
export PORT_DADDY_AGENT="$agent" PORT_DADDY_SESSION="$session"
echo "began $session as $agent ($identity): $purpose" >&2

# 2. the identity's deterministic port
port=$(pd claim "$identity" -q) || die "pd claim $identity failed"
echo "claimed $identity -> port $port" >&2

# 3. hello on the channel (JSON so watchers can parse it)
hello=$(python3 -c '
import json, sys
print(json.dumps({"event": "hello", "agentId": sys.argv[1], "sessionId": sys.argv[2],
                  "identity": sys.argv[3], "port": int(sys.argv[4]), "purpose": sys.argv[5]}))
' "$agent" "$session" "$identity" "$port" "$purpose")
pd pub "$channel" "$hello" --parse --sender "$agent" -q >/dev/null || die "pd pub $channel failed"
echo "said hello on $channel" >&2

# 4. exports for eval
echo "export PORT_DADDY_AGENT=$agent"
echo "export PORT_DADDY_SESSION=$session"
echo "export PORT=$port"
