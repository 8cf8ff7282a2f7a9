"""Names that reach the file system (spawned agent ids, fleet and agent names) never lead outside
the home: hostile names get a clear 400 or a safe file name inside the home, and nothing appears
outside it."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from fleet.paths import agent_log, fleet_dir, spawn_log
from pdcore.errors import OpError
from pdcore.paths import FILE_NAME_MAX, file_name, home_file


def hostile_names(marker: str) -> dict[str, str]:
    return {
        "parent": f"../{marker}",
        "deep": f"../../../../tmp/{marker}",
        "absolute": f"/tmp/{marker}-abs",
        "nul": f"{marker}\x00x",
        "control": f"{marker}\x1b[2J",
        "long": marker + "x" * 5000,
        "dot": ".",
        "dotdot": "..",
    }


def files_named(folder: Path, marker: str) -> list[Path]:
    """Files or folders under `folder` (two levels) whose name holds the marker."""
    found = []
    for root, dirs, files in os.walk(folder):
        if root.count(os.sep) - str(folder).count(os.sep) >= 2:
            dirs[:] = []
        found += [Path(root) / n for n in (*dirs, *files) if marker in n]
    return found


@pytest.mark.parametrize("kind", list(hostile_names("m")))
def test_every_hostile_name_maps_inside_its_folder_or_is_refused(kind, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    name = hostile_names("m")[kind]
    if kind in ("nul", "control", "long"):
        with pytest.raises(OpError) as info:
            file_name(name, "agentId")
        assert (info.value.code, info.value.field) == ("invalid_name", "agentId")
        return
    for path in (spawn_log(home, name), agent_log(home, name, name), fleet_dir(home, name)):
        assert path.resolve().is_relative_to(home.resolve()) and path.resolve() != home.resolve()
        assert "/" not in file_name(name) and file_name(name) not in (".", "..")


def test_file_names_are_one_to_one_and_bounded():
    names = ["a/b", "a%2Fb", "a_b", ".x", "%2Ex", "x" * 200, "x" * 199 + "y", "/" * 200]
    mapped = [file_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    assert all(len(m) <= 180 for m in mapped) and file_name("myapp:fleet:qa") == "myapp:fleet:qa"
    with pytest.raises(OpError):
        file_name("x" * (FILE_NAME_MAX + 1))


def test_a_folder_that_links_out_of_the_home_is_refused(tmp_path):
    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir()
    outside.mkdir()
    (home / "spawn").symlink_to(outside)
    with pytest.raises(OpError) as info:
        home_file(home, "spawn", name="agent", suffix=".log", field="agentId")
    assert "outside the home" in info.value.message


def test_spawned_agents_with_hostile_ids_write_nothing_outside_the_home(fresh_daemon, tmp_path):
    d = fresh_daemon
    marker = f"pdpath-{uuid.uuid4().hex[:10]}"
    watched = [Path("/tmp"), d.home.parent, tmp_path]
    before = {p for folder in watched for p in files_named(folder, marker)}
    accepted = []
    for kind, name in hostile_names(marker).items():
        status, body = d.http("POST", "/spawn", {"backend": "custom", "task": f"echo {marker}",
                                                 "workdir": str(tmp_path), "agentId": name})
        if kind in ("nul", "control", "long"):
            assert status == 400 and body["field"] == "agentId", (kind, body)
        else:
            assert status == 200, (kind, body)
            accepted.append(name)
    client = d.client()
    deadline = time.monotonic() + 60
    done: set[str] = set()
    while len(done) < len(accepted) and time.monotonic() < deadline:
        for name in accepted:
            runs = client.call("spawn.list", agentId=name)["agents"] if name not in (".", "..") else \
                [a for a in client.call("spawn.list")["agents"] if a["agentId"] == name]
            if runs and runs[0]["state"] in ("EXITED", "FATAL", "STOPPED"):
                done.add(name)
        time.sleep(0.1)
    assert len(done) == len(accepted), f"spawns did not finish: {set(accepted) - done}\n{d.log_tail()}"
    for name in accepted:
        log = spawn_log(d.home, name)
        assert log.is_file() and marker in log.read_text(), name
        assert log.resolve().is_relative_to(d.home.resolve())
    after = {p for folder in watched for p in files_named(folder, marker)}
    outside = [p for p in after - before if not p.resolve().is_relative_to(d.home.resolve())]
    assert not outside, outside
    print(f"\npaths: {len(hostile_names(marker))} hostile agent ids, {len(accepted)} mapped inside the home, "
          f"{len(hostile_names(marker)) - len(accepted)} refused with 400, 0 files outside the home")
