"""Service-manager units that `pd install` writes: a systemd user unit and a launchd agent."""
