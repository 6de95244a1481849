"""The CPUs and memory this process may use: what a local Ray and the report's statistics
processes are sized by when no count is given.

``os.cpu_count()`` (and Ray's own detection, which reads a container's cgroup files but not the
affinity mask) counts every core of the machine. Inside a SLURM allocation on a shared node
(``salloc -c 4``, an ``sbatch`` job's cpuset), under ``taskset``, or in a Kubernetes pod or
``docker --cpus`` container (a CFS quota), that is more processes than the job may run at once,
each with its own memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


def _quota(quota: str, period: str) -> float | None:
    """CPUs of a CFS quota (quota / period), None for no limit ("max" or a negative quota)."""
    if quota.strip() == "max":
        return None
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


def _cgroup_paths(proc_cgroup: str | os.PathLike) -> dict[str, str]:
    """This process's cgroup path per hierarchy from ``/proc/self/cgroup``: "" for the cgroup v2
    one ("0::<path>"), else each v1 controller's name ("4:memory:<path>" gives "memory"); the
    paths relative, without a leading "/". {} if it cannot be read."""
    out = {}
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].strip().lstrip("/")
        if parts[0] == "0" and parts[1] == "":
            out[""] = rel
        for name in parts[1].split(","):
            if name:
                out[name] = rel
    return out


def _upwards(top: Path, rel: str):
    """The deepest existing directory of ``top``/``rel``, then each one above it, up to and
    including ``top``: a path whose last parts are not visible (a task's cgroup, " (deleted)")
    starts at what is, and one that is not under ``top`` at all (a container that sees its own
    cgroup as the mount's root while /proc/self/cgroup names the host's path, or a path with
    "..", from outside a cgroup namespace) gives ``top`` alone."""
    if rel.endswith(" (deleted)"):
        rel = rel[:-len(" (deleted)")]
    parts = [p for p in rel.split("/") if p]
    if ".." in parts:
        parts = []
    d = top.joinpath(*parts)
    while d != top and not d.is_dir():
        d = d.parent
    while True:
        yield d
        if d == top:
            return
        d = d.parent


def _cgroup_dirs(root: str | os.PathLike, proc_cgroup: str | os.PathLike, controller: str):
    """(version, directory) of this process's cgroup and of each one above it, where
    ``controller`` ("cpu", "memory") keeps its limits: cgroup v2 (2) under ``root`` along the
    "0::<path>" line of ``proc_cgroup``, then cgroup v1 (1) under the controller's mount
    (``root``/cpu,cpuacct or ``root``/cpu; ``root``/memory) along its own line."""
    root = Path(root)
    paths = _cgroup_paths(proc_cgroup)
    for d in _upwards(root, paths.get("", "")):
        yield 2, d
    names = {"cpu": ("cpu,cpuacct", "cpu"), "memory": ("memory",)}[controller]
    for top in [root / n for n in names if (root / n).is_dir()][:1]:
        for d in _upwards(top, paths.get(controller, "")):
            yield 1, d


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT,
                     proc_cgroup: str | os.PathLike = PROC_CGROUP) -> float | None:
    """The tightest CFS CPU quota over this process's cgroup and its ancestors, in CPUs (float),
    or None where there is none or it cannot be read. cgroup v2: ``cpu.max`` ("<quota>
    <period>" or "max <period>") of the cgroup ``proc_cgroup`` names ("0::<path>") under
    ``root`` and of each directory above it up to ``root``; cgroup v1: ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` of the cpu controller's cgroup ("N:cpu,cpuacct:<path>") under
    ``root``/cpu,cpuacct or ``root``/cpu and of each directory above it (a host's systemd
    ``CPUQuota``), or of that mount's root alone where the path is not under it (a container's
    view)."""
    limits = []
    for version, d in _cgroup_dirs(root, proc_cgroup, "cpu"):
        try:
            limits.append(_quota(*(d / "cpu.max").read_text().split()[:2]) if version == 2
                          else _quota((d / "cpu.cfs_quota_us").read_text(),
                                      (d / "cpu.cfs_period_us").read_text()))
        except (OSError, ValueError, TypeError):
            pass
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


# a cgroup memory limit at or above this is "no limit" (v1: the kernel writes 2^63 - 4096)
_V1_UNLIMITED = 1 << 62


def _stat_value(path: Path, key: str) -> int:
    """The value of ``key`` in a cgroup ``memory.stat`` file, 0 if absent or unreadable."""
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _used(usage: Path, stat: Path, inactive: str) -> int:
    """A cgroup's memory in use less its inactive file cache, >= 0; 0 where the usage cannot be
    read (its limit then stands as the room: a ceiling still)."""
    try:
        used = int(usage.read_text())
    except (OSError, ValueError):
        return 0
    return max(0, used - _stat_value(stat, inactive))


def cgroup_memory_headroom(root: str | os.PathLike = CGROUP_ROOT,
                           proc_cgroup: str | os.PathLike = PROC_CGROUP) -> int | None:
    """Bytes this process's cgroup and each of its ancestors may still take before their
    memory limit, the smallest of them, or None where none has a limit (or none can be read):
    the limit minus what is in use, less the inactive file cache the kernel reclaims first
    (Kubernetes's "working set"). cgroup v2: ``memory.max`` - (``memory.current`` -
    ``inactive_file`` of ``memory.stat``) along the path as ``cgroup_cpu_limit`` walks it (a
    SLURM job's ``--mem``, a pod's limit); v1: ``memory.limit_in_bytes`` -
    (``memory.usage_in_bytes`` - ``total_inactive_file``) of the memory controller's cgroup
    and each directory above it. Never below 0; a limit whose usage cannot be read counts
    whole."""
    rooms = []
    for version, d in _cgroup_dirs(root, proc_cgroup, "memory"):
        files = (("memory.max", "memory.current", "inactive_file") if version == 2 else
                 ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
        try:
            text = (d / files[0]).read_text().strip()
            if text == "max" or int(text) >= _V1_UNLIMITED:
                continue
            rooms.append(int(text) - _used(d / files[1], d / "memory.stat", files[2]))
        except (OSError, ValueError):
            pass
    return max(0, min(rooms)) if rooms else None


def usable_memory(root: str | os.PathLike = CGROUP_ROOT,
                  proc_cgroup: str | os.PathLike = PROC_CGROUP) -> int:
    """Bytes this process may still allocate without being killed or swapping: the machine's
    available memory (``psutil.virtual_memory().available``), capped by the cgroup memory
    headroom (``cgroup_memory_headroom``: a SLURM job's ``--mem``, a container's limit)."""
    import psutil

    free = int(psutil.virtual_memory().available)
    room = cgroup_memory_headroom(root, proc_cgroup)
    return free if room is None else min(free, room)


def usable_cores(root: str | os.PathLike = CGROUP_ROOT,
                 proc_cgroup: str | os.PathLike = PROC_CGROUP) -> int:
    """The CPUs this process may use, >= 1: the CPUs of its affinity mask (``os.cpu_count()``
    where the platform has none), capped by a cgroup CPU quota rounded up
    (``cgroup_cpu_limit``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
