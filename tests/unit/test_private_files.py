"""Secret files (token, master key, team key) are read through one check: ours, 0600, regular, no link."""

from __future__ import annotations

import os

import pytest

from pdcore.auth import TokenError, read_token
from pdcore.config import load_config
from pdcore.crypto import MasterKeyError, read_key
from pdcore.privatefile import PrivateFileError, read_private
from pdcore.startcheck import StartRefused, check_state
from pdcore.team.keyfile import TeamKeyError, read_key_file


def _secret(path, data: bytes, mode: int = 0o600):
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_read_private_refuses_open_modes_links_and_folders(tmp_path):
    good = _secret(tmp_path / "s", b"x" * 10)
    assert read_private(good, "secret", 5) == b"xxxxx"
    _secret(good, b"x", 0o640)
    with pytest.raises(PrivateFileError, match=r"secret .* has mode 0640; it must be 0600 \(run: chmod 600 "):
        read_private(good, "secret", 5)
    good.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(PrivateFileError, match="cannot be opened"):
        read_private(link, "secret", 5)
    with pytest.raises(PrivateFileError, match="cannot be opened|not a regular file"):
        read_private(tmp_path, "secret", 5)
    with pytest.raises(FileNotFoundError):
        read_private(tmp_path / "none", "secret", 5)


def test_token_master_key_and_team_key_share_the_check(tmp_path):
    token = _secret(tmp_path / "auth.token", b"abc\n", 0o644)
    with pytest.raises(TokenError, match="mode 0644.*pd token rotate"):
        read_token(token)
    key = _secret(tmp_path / "master.key", os.urandom(32), 0o604)
    with pytest.raises(MasterKeyError, match="master key .* mode 0604"):
        read_key(key)
    team = _secret(tmp_path / "team.key", os.urandom(32).hex().encode() + b"\n", 0o644)
    with pytest.raises(TeamKeyError, match="team key .* mode 0644"):
        read_key_file(team)
    team.chmod(0o600)
    assert len(read_key_file(team)) == 32
    _secret(team, b"short")
    with pytest.raises(TeamKeyError, match="is 5 bytes; a team key is 32 bytes"):
        read_key_file(team)
    with pytest.raises(TeamKeyError, match="is missing"):
        read_key_file(tmp_path / "gone.key")


def test_a_start_with_a_team_key_others_can_read_is_refused_in_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    team = _secret(tmp_path / "team.key", os.urandom(32), 0o644)
    config = load_config(home, environ={}, team_servers=["nats://127.0.0.1:4222"], team_space="s",
                         team_key_file=str(team))
    with pytest.raises(StartRefused) as refused:
        check_state(config)
    assert refused.value.kind == "team_key" and not refused.value.can_start_afresh
    assert "\n" not in str(refused.value) and "chmod 600" in str(refused.value)
    team.chmod(0o600)
    check_state(config)  # a new home with a private team key starts
