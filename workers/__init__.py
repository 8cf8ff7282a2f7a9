"""The HTTP side: a Falcon WSGI app under gunicorn, forwarding every request to the core.

See workers.app (the app), workers.server (the gunicorn process), docs/http-api.md.
"""
