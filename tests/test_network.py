"""A local sweep listens on loopback only (README "Network exposure").

The slow tests start a local Ray in a child process and list, while it runs, every listening
socket (TCP in LISTEN, UDP bound without a peer; IPv4 and IPv6) of the processes it started:
the driver, its descendants, and every process whose environment carries the child's own
``RAY_TMPDIR`` (Ray's servers and workers, even if one were re-parented). The children run
without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (this suite's conftest sets it for itself), as a
user's shell would.
"""

import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import psutil
import pytest

from sweep.driver import check_loopback, loopback_node

VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WAIT_S = 600  # a guard against a hung child, not a timing assertion


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped 127.x (``::ffff:127.0.0.1``, what a dual-stack
    socket bound to 127.0.0.1 shows); ``0.0.0.0``, ``::`` (all interfaces) and any network
    address are not."""
    a = ipaddress.ip_address(host.split("%")[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_loopback


def test_is_loopback_by_hand():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "fd00::2", "::ffff:0.0.0.0",
                                     "::ffff:192.0.2.2", "fe80::1%eth0"]))


def child_env(ray_tmp: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != VAR}
    env.update(RAY_TMPDIR=ray_tmp, **extra)
    return env


def processes(root: int, ray_tmp: str) -> dict[int, psutil.Process]:
    """The child ``root``, its descendants, and the processes (with their descendants) whose
    environment has ``RAY_TMPDIR=ray_tmp``."""
    found: dict[int, psutil.Process] = {}
    tops = []
    try:
        tops.append(psutil.Process(root))
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAY_TMPDIR") == ray_tmp:
                tops.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    for p in tops:
        try:
            for q in [p, *p.children(recursive=True)]:
                found[q.pid] = q
        except psutil.NoSuchProcess:
            continue
    return found


def listeners(procs: dict[int, psutil.Process]) -> set[tuple]:
    """(pid, process label, "tcp"/"udp", ip, port) of every listening socket of ``procs``."""
    out = set()
    for p in procs.values():
        try:
            conns = (getattr(p, "net_connections", None) or p.connections)(kind="inet")
            label = (p.cmdline() or [p.name()])[0]
            label = label if label.startswith("ray::") else p.name()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            tcp = c.type == socket.SOCK_STREAM
            if (tcp and c.status == psutil.CONN_LISTEN) or (not tcp and not c.raddr and c.laddr):
                out.add((p.pid, label, "tcp" if tcp else "udp", c.laddr.ip, c.laddr.port))
    return out


def kill(procs: dict[int, psutil.Process]) -> None:
    """SIGKILL what this test started (found by ``processes``), by PID."""
    alive = []
    for p in procs.values():
        try:
            p.kill()
            alive.append(p)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=30)


def kinds(seen: set[tuple], driver: int) -> set[str]:
    """Which of Ray's servers the listing caught: driver, gcs_server, raylet, runtime-env agent,
    worker."""
    got = set()
    for pid, label, *_ in seen:
        if pid == driver:
            got.add("driver")
        elif label in ("gcs_server", "raylet"):
            got.add(label)
        elif label.startswith("ray::RuntimeEnvAgent"):
            got.add("runtime-env agent")
        elif label.startswith("ray::") and "Agent" not in label:
            got.add("worker")
    return got


ALL_KINDS = {"driver", "gcs_server", "raylet", "runtime-env agent", "worker"}


def offenders(seen: set[tuple]) -> list[tuple]:
    return sorted(s for s in seen if not is_loopback(s[3]))


@pytest.mark.slow
def test_a_local_sweep_listens_on_loopback_only(tmp_path):
    """`sweep launch` with a local Ray: every listening socket of the driver, Ray's GCS,
    raylet, runtime-env agent and workers is on 127.0.0.1 (or ::1), none on all interfaces
    (``*``, ``0.0.0.0``, ``::``) or the machine's network address (all of them were, with Ray
    2.60, before: Ray read the loopback switch at its import, before the driver set it)."""
    out = tmp_path / "s"
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live there
    cmd = [sys.executable, "-m", "sweep.cli", "launch", "trials=4", "dataset.train_size=200",
           "dataset.test_size=60", "train.steps=600", "train.check_every=100",
           "train.early_stop=false", "space.width=[16]", "space.depth=[2]",
           "space.batch_size=[32]", "progress=false", "figure=false", f"out={out}",
           "cluster.num_cpus=2"]
    log = tmp_path / "stderr.txt"
    seen: set[tuple] = set()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, env=child_env(ray_tmp), stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    deadline = time.monotonic() + WAIT_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= listeners(processes(proc.pid, ray_tmp))
            time.sleep(0.2)
        assert proc.poll() is not None, f"the sweep did not finish within {WAIT_S} s"
    finally:
        kill(processes(proc.pid, ray_tmp))
        proc.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert len(list((out / "trials").glob("*.parquet"))) == 4
    assert kinds(seen, proc.pid) == ALL_KINDS, sorted(seen)  # the listing saw the servers
    assert offenders(seen) == [], offenders(seen)


START_AFTER_IMPORT = r"""
import json, os, sys
import ray  # imported before the sweep's code: Ray has read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
from ray._private import ray_constants
from sweep.config import compose
from sweep.driver import start_ray

start_ray(compose(["cluster.num_cpus=1"]))

@ray.remote
def pid():
    return os.getpid()

print(json.dumps({"worker": ray.get(pid.remote()), "node_ip": ray.util.get_node_ip_address(),
                  "env": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
                  "const": ray_constants.ENABLE_RAY_CLUSTER}), flush=True)
sys.stdin.readline()  # until the test has listed the sockets
ray.shutdown()
"""


@pytest.mark.slow
def test_start_ray_after_ray_was_imported_and_told_cluster_listens_on_loopback(tmp_path):
    """The same through the Python API (what `sweep measure` and the memory probe use), with
    ``ray`` imported first and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 in the environment: the local
    Ray is on loopback, and afterwards the variable and Ray's constant are as they were."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", START_AFTER_IMPORT],
                                env=child_env(ray_tmp, **{VAR: "1"}), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
        assert ready, f"the child printed nothing within {WAIT_S} s"
        line = proc.stdout.readline()
        assert line, f"the child exited before starting Ray: {log.read_text()[-3000:]}"
        got = json.loads(line)
        seen: set[tuple] = set()
        for _ in range(3):  # the runtime-env agent may bind a moment after the first listing
            seen |= listeners(processes(proc.pid, ray_tmp))
            time.sleep(0.5)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=WAIT_S) == 0, log.read_text()[-3000:]
    finally:
        kill(processes(proc.pid, ray_tmp))
        proc.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert got["node_ip"] == "127.0.0.1"
    assert (got["env"], got["const"]) == ("1", True)  # restored after the start
    assert {"driver", "gcs_server", "raylet", "worker"} <= kinds(seen, proc.pid), sorted(seen)
    assert got["worker"] in {pid for pid, *_ in seen}
    assert offenders(seen) == [], offenders(seen)


def test_check_loopback_refuses_a_network_node_address_and_stops_that_ray():
    calls = []
    fake = types.SimpleNamespace(__version__="2.60.0", shutdown=lambda: calls.append("shutdown"),
                                 util=types.SimpleNamespace(get_node_ip_address=lambda: ip))
    for ip in ["127.0.0.1", "::1"]:
        check_loopback(fake)
    assert calls == []
    for ip in ["192.0.2.2", "0.0.0.0"]:
        with pytest.raises(RuntimeError, match=f"started on {ip}, not 127.0.0.1"):
            check_loopback(fake)
    assert calls == ["shutdown", "shutdown"]


@pytest.mark.parametrize("before", [None, "1", "0"])
def test_loopback_node_sets_and_restores_the_switch(monkeypatch, before):
    from ray._private import ray_constants

    if before is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, before)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with pytest.raises(KeyError):
        with loopback_node():
            assert os.environ[VAR] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
            raise KeyError("a failed start")
    assert os.environ.get(VAR) == before and ray_constants.ENABLE_RAY_CLUSTER is True
