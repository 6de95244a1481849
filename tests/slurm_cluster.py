"""A one-node SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd of the
machine's Slurm (Debian's slurm-wlm, installed by .ci/run), each with its own socket, ports,
state and logs in a temporary directory, and ``SLURM_CONF`` pointing at its slurm.conf. Started
as root with ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` (no cgroups
needed); ``OverTimeLimit=0`` and ``KillWait=5`` make a job's time limit bite at once. Stopped by
the daemons' own PIDs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "scancel")
UP_TIMEOUT_S = 30.0


class Unavailable(Exception):
    """Why the daemons cannot run here (the test is skipped with it)."""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def slurm_conf(root: Path, host: str, ports: list[int], cpus: int, memory_mb: int) -> str:
    return f"""\
ClusterName=sweeptest
# job ids (and so the batch script's Ray ports, 20000 + 3 x id) of their own, unlike those of
# another test cluster on this machine (two test workers may run one each)
FirstJobId={1 + ports[0] % 997 * 3}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
OverTimeLimit=0
KillWait=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster():
    """Yields the environment (os.environ with SLURM_CONF) of a running one-node cluster.
    Raises Unavailable (before yielding) when it cannot start here."""
    if os.geteuid() != 0:
        raise Unavailable("the SLURM daemons need root here (slurmd as root, no cgroups)")
    missing = [c for c in DAEMONS + CLIENTS if shutil.which(c) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (.ci/run installs slurmctld "
                          "slurmd munge slurm-client)")
    root = Path(tempfile.mkdtemp(prefix="slurm-"))  # short: munge's socket path
    root.chmod(0o711)
    for d in ("state", "spool"):
        (root / d).mkdir()
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = max(1000, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host, _free_ports(2), cpus, memory_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    pid_files = [root / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
    try:
        subprocess.run(["munged", f"--socket={root}/munge.sock", f"--key-file={key}",
                        f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                        f"--seed-file={root}/munged.seed", "--force"],
                       check=True, env=env, capture_output=True, timeout=30)
        subprocess.run(["slurmctld", "-i"], check=True, env=env, capture_output=True, timeout=30)
        subprocess.run(["slurmd"], check=True, env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + UP_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                               text=True, timeout=10)
            state = r.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise Unavailable(f"the node did not come up (state {state!r}); slurmctld: "
                              f"{_tail(root / 'slurmctld.log')}; slurmd: "
                              f"{_tail(root / 'slurmd.log')}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        _stop(env, pid_files, root)
        raise Unavailable(f"the SLURM daemons did not start ({type(e).__name__}: "
                          f"{err.decode(errors='replace').strip()[-300:]}); munged: "
                          f"{_tail(root / 'munged.log')}; slurmctld: "
                          f"{_tail(root / 'slurmctld.log')}") from None
    except Unavailable:
        _stop(env, pid_files, root)
        raise
    try:
        yield env
    finally:
        _stop(env, pid_files, root)


def _stop(env: dict, pid_files: list[Path], root: Path) -> None:
    """Cancel every job of this cluster (it is ours alone), then stop the daemons by PID."""
    try:
        subprocess.run(["scancel", "--full", "--quiet", "--partition=debug"], env=env,
                       capture_output=True, timeout=15)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True,
                               timeout=10)
            if r.returncode != 0 or not r.stdout.strip():
                break
            time.sleep(0.5)
    except (OSError, subprocess.TimeoutExpired):
        pass
    # slurmd and slurmctld together (each takes ~2 s to exit), then munged, which they use
    for group in ([pid_files[2], pid_files[1]], [pid_files[0]]):
        pids = []
        for f in group:
            pid = _pid(f)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except ProcessLookupError:
                continue
        for pid in pids:  # up to 10 s in all, then SIGKILL
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    shutil.rmtree(root, ignore_errors=True)
