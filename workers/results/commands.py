"""The commands the tool prints for a user to copy (resume, measure, report, launch...).

Every such command is built here, so that it means in a shell what it says: each argument is
quoted with ``shlex`` where a POSIX shell would split it (``runs/my sweep``), expand it
(``~``, ``$``, ``[...]`` for zsh) or end it (a quote), and ``shlex.split`` of the line gives back
exactly the arguments. It sits with the sweep directory's contract because every layer names a
sweep directory in a command (a worker's ``sweep measure --retrain``, the report's
``sweep report --train-acc``, the driver's ``sweep resume``); ``sweep.commands`` re-exports it.
"""

from __future__ import annotations

import shlex


def sweep_command(*args) -> str:
    """``sweep`` with ``args`` (sub-command, paths, options, KEY=VALUE overrides; each turned
    into ``str``, so a Path or a Store gives its location) as one line for a POSIX shell.
    E.g. ``sweep_command("resume", "runs/my sweep")`` is ``sweep resume 'runs/my sweep'``."""
    return shlex.join(["sweep", *map(str, args)])
