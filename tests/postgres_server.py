"""A real PostgreSQL (Debian's package) for the transcript store's tests: a new cluster in a
temporary directory, on a free port on 127.0.0.1, stoppable and restartable on that port.

`initdb` and `postgres` refuse to run as root, so as root (CI, this machine) they run as
`nobody`, in a directory it owns; as another user, as that user. Durability to the disk is off
(`fsync=off`): the tests check what the store does, not the disk."""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

UNPRIVILEGED = "nobody"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian keeps it off PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The bin directory of initdb and pg_ctl; skips the test without them (fails under CI,
    which installs them: `.ci/run`)."""
    found = postgres_bin()
    if found is not None:
        return found
    message = (
        "the PostgreSQL store's tests need a real PostgreSQL (initdb, pg_ctl under "
        "/usr/lib/postgresql/*/bin): apt-get install postgresql"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1; `url()` stays valid across `restart()`."""

    def __init__(self) -> None:
        self.bin = require_postgres()
        self.workdir = Path(tempfile.mkdtemp(prefix="tdp-postgres-"))
        self.data = self.workdir / "data"
        self.port = 0
        self._as_root = os.geteuid() == 0
        if self._as_root:  # the server's own user must own its directory
            shutil.chown(self.workdir, UNPRIVILEGED)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start on the current port, or on a free random one the first time."""
        for _ in range(20):
            port = self.port or random.randint(20_000, 59_999)
            if self._try_start(port):
                self.port = port
                return
        raise RuntimeError(f"PostgreSQL did not start:\n{self._log()}")

    def _try_start(self, port: int) -> bool:
        options = (
            # fsync off: a commit still reaches the OS before it returns, so it survives a
            # stop in immediate mode (the page cache outlives the server's processes).
            f"-p {port} -h 127.0.0.1 -k '' -c fsync=off -c full_page_writes=off"
        )
        result = self._run(
            "pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data),
            "-l", str(self.workdir / "log"), "-o", options, check=False,
        )  # fmt: skip
        return result.returncode == 0

    def stop(self) -> None:
        """Stop it now (immediate mode: what a crash looks like to its clients)."""
        self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data), check=False)

    def restart(self) -> None:
        """Start again on the same port, with the same data."""
        self.start()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _log(self) -> str:
        log = self.workdir / "log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", UNPRIVILEGED, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=self.workdir, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")
        return result
