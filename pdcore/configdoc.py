"""The settings reference in docs/operations.md, generated from the Config class's own source.

Each `name: type = default  # comment` line of `pdcore.config.Config` becomes a row; `# section`
lines become headings. `python -m pdcore.configdoc --write` refreshes the block between the
markers in docs/operations.md; a unit test fails when it is out of date.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from pdcore.config import Config

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
_FIELD = re.compile(r"^\s{4}(\w+): ([^=]+?)(?: = (.+?))?(?:\s+#\s*(.*))?$")
_SECTION = re.compile(r"^\s{4}#\s*(.+)$")


def render() -> str:
    rows: list[str] = []
    example = Config(home=Path("<home>"))
    for line in inspect.getsource(Config).splitlines():
        if line.strip().startswith("def "):
            break
        section = _SECTION.match(line)
        if section:
            rows.append(f"\n**{section.group(1)}**\n\n| setting | default | meaning |\n|---|---|---|")
            continue
        m = _FIELD.match(line)
        if not m or m.group(1) == "home":
            continue
        name, _type, default, comment = m.groups()
        default = (default or "").replace("field(default_factory=lambda: ", "").rstrip(")") if default else ""
        if "default_factory=list" in (m.group(3) or ""):
            default = "[]"
        if default == "None" and getattr(example, name) is not None:
            default = str(getattr(example, name))
        if not rows:
            rows.append("| setting | default | meaning |\n|---|---|---|")
        rows.append(f"| `{name}` (`PORT_DADDY_{name.upper()}`) | `{default}` | {comment or ''} |")
    return "\n".join(rows).strip() + "\n"


def write() -> bool:
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + render() + text[end:]
    if new != text:
        DOC.write_text(new)
        return True
    return False


def current() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].lstrip("\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        print(f"{DOC}: {'updated' if write() else 'already up to date'}")
    else:
        sys.stdout.write(render())
