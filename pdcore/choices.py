"""The closed vocabularies that operations, state and the CLI share (note types, session phases, ...).

Each is defined here once. The op catalogue (`pdcore.ops.*`), the state module that enforces it
and the CLI's `click.Choice` all import it from this module, which imports nothing, so loading
the catalogue (every `pd` command does) does not load the state modules and their databases,
ciphers and process tables.
"""

from __future__ import annotations

CHANGELOG_TYPES = ("feature", "fix", "refactor", "docs", "chore", "breaking")
NOTE_TYPES = ("note", "progress", "decision", "blocker", "question", "handoff", "general", "commit")  # note: 3.7's default
SALVAGE_STATUSES = ("pending", "claimed", "completed", "dismissed")
SESSION_PHASES = ("planning", "in_progress", "testing", "reviewing", "completed", "abandoned")
SESSION_END_STATUSES = ("completed", "abandoned")
SESSION_STATUSES = ("active", *SESSION_END_STATUSES)
SPAWN_BACKENDS = ("claude-cli", "ollama", "gemini", "aider", "custom")
SPAWN_STATES = ("PENDING", "STARTING", "RUNNING", "BACKOFF", "EXITED", "FATAL", "STOPPED")
SPAWN_OUTCOMES = ("success", "failure", "timeout", "killed", "spawn_error", "lost")
SPAWN_RUNNER_KINDS = ("daemon", "foreground")
