"""The CPUs this process may use: what a local Ray and the report's statistics processes are
sized by when no count is given.

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


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT,
                     proc_cgroup: str | os.PathLike = PROC_CGROUP) -> float | None:
    """The tightest CFS CPU quota over this process's cgroup and its ancestors, in CPUs (float),
    or None where there is none or it cannot be read. cgroup v2: ``cpu.max`` ("<quota>
    <period>" or "max <period>") of the cgroup ``proc_cgroup`` names ("0::<path>") under
    ``root`` and of each directory above it up to ``root``; cgroup v1: ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` under ``root``/cpu,cpuacct or ``root``/cpu (a container's view)."""
    root = Path(root)
    limits = []
    rel = ""
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
    except OSError:
        pass
    d = root / rel if rel else root
    while True:
        try:
            limits.append(_quota(*(d / "cpu.max").read_text().split()[:2]))
        except (OSError, ValueError, TypeError):
            pass
        if d == root or root not in d.parents:
            break
        d = d.parent
    for v1 in ("cpu,cpuacct", "cpu"):
        try:
            limits.append(_quota((root / v1 / "cpu.cfs_quota_us").read_text(),
                                 (root / v1 / "cpu.cfs_period_us").read_text()))
            break
        except (OSError, ValueError):
            continue
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


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
