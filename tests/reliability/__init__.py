"""Reliability and security under hostile local users and clients (issue: security and hardening)."""
