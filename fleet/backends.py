"""How each backend is run: the argv of its child process (SPEC.md §11).

claude-cli: `claude -p PROMPT --allowedTools TOOLS [--model M]`; gemini: `gemini -p PROMPT
[-m M]`; aider: `aider --message PROMPT [--model M] FILES...`; ollama: `ollama run MODEL PROMPT`;
custom: the prompt is a shell command, run with `/bin/sh -c`.
"""

from __future__ import annotations

from pdcore.state.spawn import BACKENDS, normalize_backend

EXECUTABLES = {"claude-cli": "claude", "gemini": "gemini", "aider": "aider", "ollama": "ollama", "custom": "/bin/sh"}
TAKES_ALLOWED_TOOLS = frozenset({"claude-cli"})
NEEDS_MODEL = frozenset({"ollama"})
LLM_BACKENDS = frozenset(BACKENDS) - {"custom"}

__all__ = ["BACKENDS", "EXECUTABLES", "LLM_BACKENDS", "NEEDS_MODEL", "TAKES_ALLOWED_TOOLS", "build_argv",
           "normalize_backend"]


def build_argv(backend: str, prompt: str, model: str | None = None, allowed_tools: str | None = None,
               files: list[str] | None = None) -> list[str]:
    """The child's argv for one run. `prompt` is final (variables filled, trigger context added)."""
    backend = normalize_backend(backend)
    exe = EXECUTABLES[backend]
    if backend == "custom":
        return [exe, "-c", prompt]
    if backend == "claude-cli":
        argv = [exe, "-p", prompt]
        if allowed_tools:
            argv += ["--allowedTools", allowed_tools]
        if model:
            argv += ["--model", model]
        return argv
    if backend == "gemini":
        return [exe, "-p", prompt] + (["-m", model] if model else [])
    if backend == "aider":
        return [exe, "--message", prompt] + (["--model", model] if model else []) + list(files or [])
    if not model:
        raise ValueError("backend ollama needs a model")
    return [exe, "run", model, prompt]
