"""The `pd` command line: parse, call the SDK, print. No decisions live here."""
