"""Child processes of the tests. Each runs with a timeout; when it passes (or the test is
interrupted) the child and every process it started are killed (by their ids: the child's
descendants and its own session), so a hung sweep and the local Ray it started never outlive
the test."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_tree(pid: int, group: bool = True) -> None:
    """SIGKILL process ``pid``, its descendants, and, with ``group`` (``pid`` was started with
    ``start_new_session=True``, so its process group's id is ``pid``), what is left in its
    group, also after ``pid`` itself has ended (a process Ray re-parents keeps the group);
    waits up to 30 s for them to go. Processes already gone are skipped."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if group:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    psutil.wait_procs(procs, timeout=30)


def run(cmd, *, timeout: float, capture_output: bool = False, text: bool = False,
        **kw) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, timeout=timeout, ...)`` whose timeout also kills what the child
    started: the child runs in a session of its own, and on ``TimeoutExpired`` (raised again)
    or any other interruption :func:`kill_tree` ends it with its descendants."""
    if capture_output:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen(cmd, start_new_session=True, text=text, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        kill_tree(proc.pid)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
