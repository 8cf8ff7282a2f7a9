#!/bin/sh
# fleet-validate.sh: pd fleet validate, plus the most common fleet bug (fleet.name != project folder
# name) and the git post-commit hook that git:committed triggers need.
set -eu

usage() {
    echo "usage: fleet-validate.sh [-h] [PATH]   (PATH: a fleet file or a project folder; default .)"
}
die() { echo "fleet-validate: $*" >&2; exit 1; }

target="."
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) target=$1 ;;
    esac
    shift
done
command -v pd >/dev/null 2>&1 || die "pd is not on PATH"

# find the fleet file the way pd does: pd-fleet.yml, pd-fleet.yaml, .portdaddy/fleet.yml, .portdaddy/fleet.yaml
if [ -f "$target" ]; then
    file=$target
else
    [ -d "$target" ] || die "no such file or folder: $target"
    file=""
    for name in pd-fleet.yml pd-fleet.yaml .portdaddy/fleet.yml .portdaddy/fleet.yaml; do
        if [ -f "$target/$name" ]; then file="$target/$name"; break; fi
    done
    [ -n "$file" ] || die "no pd-fleet.yml in $target (create one: pd fleet init, or cp assets/pd-fleet.starter.yml)"
fi

# project folder: the file's folder (its parent when the file is in .portdaddy/)
facts=$(python3 -c '
import os, re, sys
path = os.path.abspath(sys.argv[1])
folder = os.path.dirname(path)
if os.path.basename(folder) == ".portdaddy":
    folder = os.path.dirname(folder)
name = ""
for line in open(path, encoding="utf-8", errors="replace"):
    m = re.match(r"^(?:  )?name:\s*[\"\x27]?([^\"\x27#\s]+)", line)
    if m:
        name = m.group(1)
        break
print(folder)
print(os.path.basename(folder))
print(name)
' "$file") || die "cannot read $file"
project_dir=$(printf '%s\n' "$facts" | sed -n 1p)
folder=$(printf '%s\n' "$facts" | sed -n 2p)
fleet_name=$(printf '%s\n' "$facts" | sed -n 3p)

status=0
echo "== pd fleet validate $file"
pd fleet validate "$file" || status=1

echo "== fleet.name vs project folder"
if [ -z "$fleet_name" ]; then
    echo "error: no fleet name in $file. Fix: add name: $folder under fleet:"
    status=1
elif [ "$fleet_name" != "$folder" ]; then
    echo "error: fleet.name is '$fleet_name' but the project folder is '$folder': its agents never fire. Fix: set name: $folder"
    status=1
else
    echo "ok: fleet.name '$fleet_name' = folder name"
fi

echo "== git post-commit hook"
hook_state=$(python3 -c '
import configparser, os, sys
d = os.path.abspath(sys.argv[1])
while True:
    git = os.path.join(d, ".git")
    if os.path.exists(git):
        break
    parent = os.path.dirname(d)
    if parent == d:
        print("nogit"); sys.exit(0)
    d = parent
gitdir = git
if os.path.isfile(git):  # a worktree: "gitdir: <path>"
    text = open(git).read().strip()
    gitdir = os.path.join(d, text.split(":", 1)[1].strip()) if text.startswith("gitdir:") else git
hooks = os.path.join(gitdir, "hooks")
cfg = configparser.RawConfigParser(strict=False)
try:
    cfg.read(os.path.join(gitdir, "config"))
    hp = cfg.get("core", "hookspath", fallback=None)
    if hp:
        hooks = hp if os.path.isabs(hp) else os.path.join(d, hp)
except configparser.Error:
    pass
hook = os.path.join(hooks, "post-commit")
try:
    text = open(hook).read()
except OSError:
    print("missing " + hook); sys.exit(0)
print(("ok " if "port-daddy fleet (pd fleet init)" in text else "foreign ") + hook)
' "$project_dir")
case "$hook_state" in
    ok\ *) echo "ok: ${hook_state#ok } publishes git:committed" ;;
    nogit) echo "warning: $project_dir is not in a git repository: git:committed triggers never fire" ;;
    missing\ *) echo "warning: no post-commit hook (${hook_state#missing }): git:committed never fires. Fix: pd fleet init (keeps your pd-fleet.yml)" ;;
    foreign\ *) echo "warning: ${hook_state#foreign } has no Port Daddy block. Fix: pd fleet init (appends it, keeps the hook)" ;;
esac

[ "$status" = 0 ] || die "$file has errors (see above)"
echo "fleet-validate: ok"
