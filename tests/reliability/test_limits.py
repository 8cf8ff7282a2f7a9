"""A list's `limit` above its maximum is a 400 naming `limit` and the maximum, through every door."""


def test_limits_above_the_maximum_are_refused_over_http_and_the_cli(daemon):
    for path, top in (("/notes", 1000), ("/tuples", 10_000), ("/tuples/scan", 10_000), ("/agents", 100_000)):
        status, body = daemon.http("GET", f"{path}?limit={top + 1}")
        assert status == 400 and body.get("field") == "limit", (path, body)
        assert str(top) in body["error"], (path, body)
        status, body = daemon.http("GET", f"{path}?limit={top}")
        assert status == 200, (path, body)
    run = daemon.pd("notes", "--limit", "10000")
    assert run.returncode != 0 and "limit" in run.stderr and "1000" in run.stderr
