"""Reap the local Ray of a driver that died without shutting it down (SIGKILL, OOM killer).

``python -m sweep.reaper DRIVER_PID ROOT_PID [ROOT_PID ...]`` runs in its own session beside a
driver that started a local Ray (the roots: its raylet and GCS). While the driver lives, it notes
every descendant of the roots (PID and start time; Ray's agents and workers come and go), and
exits as soon as all of them are gone (a normal ``ray.shutdown``). Once the driver is gone it
waits ``GRACE_S`` for them to exit on their own, then sends SIGTERM and, ``GRACE_S`` later,
SIGKILL to those still alive. Only processes this driver's Ray
started are touched, each by PID and checked against its start time (no reused PID is hit).
"""

from __future__ import annotations

import sys
import time

POLL_S = 1.0
GRACE_S = 5.0


def _snapshot(roots: dict, known: dict) -> None:
    """Note the roots' living descendants; a root whose pid now names another process (its
    start time changed) is dropped, so a reused pid is never walked."""
    import psutil

    for pid, started in list(roots.items()):
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) > 1e-3:
                del roots[pid]
                continue
            for q in [p] + p.children(recursive=True):
                known.setdefault(q.pid, q.create_time())
        except psutil.Error:
            continue


def _alive(known: dict) -> list:
    import psutil

    out = []
    for pid, started in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def reap(driver: int, root_pids: list[int]) -> int:
    import psutil

    known: dict[int, float] = {}
    roots: dict[int, float] = {}
    for pid in root_pids:
        try:
            roots[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            pass
    try:
        drv = psutil.Process(driver)
        drv_started = drv.create_time()
    except psutil.Error:
        return 0
    while True:
        _snapshot(roots, known)
        if not _alive(known):  # Ray was shut down normally (the driver may live on): done
            return 0
        try:
            if psutil.Process(driver).create_time() != drv_started:
                break
            if psutil.Process(driver).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        time.sleep(POLL_S)
    deadline = time.time() + GRACE_S
    while _alive(known) and time.time() < deadline:
        time.sleep(0.2)
    for sig in ("terminate", "kill"):
        procs = _alive(known)
        if not procs:
            return 0
        for p in procs:
            try:
                getattr(p, sig)()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=GRACE_S)
    return 0


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    sys.exit(reap(args[0], args[1:]))
