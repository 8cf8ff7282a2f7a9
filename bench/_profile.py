"""Sample a process with py-spy (pip install py-spy) while a benchmark part runs.

    with Profile(core_pid, "/tmp/prof/new-claims") as prof: ...run load...
    print(prof.summary())   # top functions by own time, and by inclusive time

Writes <prefix>.txt (py-spy "raw" collapsed stacks, usable by flamegraph.pl / speedscope).
When py-spy is missing or not permitted, the profile is skipped with a note.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
from pathlib import Path


class Profile:
    def __init__(self, pid: int | None, prefix: str | Path | None, rate: int = 250) -> None:
        self.pid = pid
        self.path = Path(f"{prefix}.txt") if prefix else None
        self.rate = rate
        self.proc: subprocess.Popen | None = None
        self.note: str | None = None

    def __enter__(self) -> Profile:
        if self.path is None or self.pid is None:
            return self
        exe = shutil.which("py-spy")
        if exe is None:
            self.note = "py-spy not installed (pip install py-spy)"
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "record", "-p", str(self.pid), "-r", str(self.rate), "-f", "raw",
                                      "--nonblocking", "-o", str(self.path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.path.exists():  # type: ignore[union-attr]
            self.note = f"py-spy wrote nothing: {err.decode(errors='replace').strip()[-300:]}"

    def summary(self, top: int = 12) -> str:
        if self.note:
            return f"  (profile: {self.note})"
        if self.path is None or not self.path.exists():
            return ""
        return summarize(self.path, top)


def summarize(path: Path, top: int = 12) -> str:
    """Top functions (file:line) by own and by inclusive share of the samples."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "  (profile: no samples)"
    skip = ("<module>", "_run_code", "_run_module_as_main", "main (", "run (uvloop", "Runner.run")
    lines = [f"  profile {path} ({total} samples)", "  own time:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top + 8)
              if not any(s in f for s in skip)][:top]
    return "\n".join(lines)
