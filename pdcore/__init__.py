"""Port Daddy core: the single-threaded state owner, its protocol, op catalogue and SDK."""

__version__ = "4.0.0"
