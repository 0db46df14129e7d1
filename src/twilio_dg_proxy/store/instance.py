"""Which process streams a call: the `instance` a live call's row names, and whether that
process has stopped (so that its calls, left live, can be marked interrupted)."""

from __future__ import annotations

import os
import socket


def this_instance() -> str:
    """This process, as a live call's row names it: `pid@hostname`."""
    return f"{os.getpid()}@{socket.gethostname()}"


def is_gone(instance: str, me: str | None = None) -> bool:
    """Whether the process `instance` names has stopped: on this host, a pid that no longer
    runs, or this process's own pid (a new process reusing it, as pid 1 in a restarted
    container: its calls cannot be live yet). Another host's, or a name that is not
    `pid@hostname`, is never taken for gone: there is no way to tell."""
    me = me or this_instance()
    pid_text, _, host = instance.partition("@")
    my_pid, _, my_host = me.partition("@")
    if host != my_host or not pid_text.isdigit():
        return False
    if pid_text == my_pid:
        return True
    try:
        os.kill(int(pid_text), 0)  # signal 0: only asks whether it exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process; or not a pid
        return False
    return False
