"""Places that cannot be reached are one line (issue #22 item 9): an S3 bucket that does not
exist, an S3 endpoint that is down, a local path that cannot be written, a ``cluster.address``
where nothing listens or whose cluster refuses this driver's token. Every command that takes
``out=`` / SWEEP_DIR or connects to Ray says so in one line on stderr, exit 2, before any work,
without a traceback. Every test runs the CLI in a subprocess, as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from procs import kill_tree, run
from s3server import aws_env, free_port, keys

from sweep.cli import main

TINY = ["trials=1", "space.width=[8]", "space.depth=[2]", "train.steps=10",
        "dataset.train_size=100", "dataset.test_size=40", "space.batch_size=[32]",
        "progress=false", "figure=false", "measures=[jacobian_norm_test]"]
# every command that takes a sweep directory, with its arguments around it
COMMANDS = {
    "plan": lambda loc: ["plan", *TINY, f"out={loc}"],
    "launch": lambda loc: ["launch", *TINY, f"out={loc}"],
    "resume": lambda loc: ["resume", loc],
    "measure": lambda loc: ["measure", loc],
    "status": lambda loc: ["status", loc],
    "report": lambda loc: ["report", loc],
    "compact": lambda loc: ["compact", loc],
}


_free_port = free_port


def sweep(args, env=None, timeout=180) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "sweep.cli", *args], capture_output=True, text=True,
               timeout=timeout, env={**os.environ, **(env or {})})


def read_line(proc: subprocess.Popen, seconds: float) -> str:
    """The first line ``proc`` writes to its stdout pipe (without the newline), or what came
    before it when no full line came within ``seconds`` (or the pipe closed)."""
    import select

    fd, got, deadline = proc.stdout.fileno(), b"", time.monotonic() + seconds
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        byte = os.read(fd, 1)
        if not byte:  # closed: the process ended
            break
        got += byte
    return got.decode(errors="replace").strip()


def one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    """The single stderr line of a refused command (exit 2, no traceback), checked to hold
    ``words``."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith("sweep: error: ") and all(w in err for w in words), err
    return err


# ---------------------------------------------------------------------------------------------
# S3: a moto server on 127.0.0.1

_aws = aws_env  # the moto server's ``s3`` fixture: tests/conftest.py, tests/s3server.py
_keys = keys


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bucket_that_does_not_exist_is_one_line_for_every_command(s3, command):
    endpoint, _ = s3
    r = sweep(COMMANDS[command]("s3://nobucket/x"), env=_aws(endpoint))
    one_line(r, "'nobucket' does not exist", endpoint, "create it")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["plan", "status"])
def test_an_s3_endpoint_that_is_down_is_one_line(command):
    """An endpoint on a closed port (the AWS client's own retries take about 12 s)."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    r = sweep(COMMANDS[command]("s3://sweeps/x"), env=_aws(endpoint))
    one_line(r, "cannot reach s3://sweeps/x", "AWS_ENDPOINT_URL=" + endpoint)


@pytest.mark.slow
def test_an_existing_bucket_works_and_a_refused_plan_leaves_nothing_there(s3):
    """The write check leaves no file behind: a plan refused after it (more trials than the
    space holds) writes nothing under its prefix, and a sweep planned there holds only its
    own files."""
    endpoint, client = s3
    client.create_bucket(Bucket="sweeps")
    r = sweep(["plan", *TINY[1:], "trials=100000", "out=s3://sweeps/a/b/refused"],
              env=_aws(endpoint))
    one_line(r, "trials")
    # nothing but the empty directory markers pyarrow leaves (a recursive removal of those
    # could take a peer driver's files: storage._remove_probe)
    assert [k for k in _keys(client, "sweeps") if not k.endswith("/")] == []
    r = sweep(["plan", *TINY, "out=s3://sweeps/a/b/ok"], env=_aws(endpoint))
    assert r.returncode == 0, r.stderr
    keys = _keys(client, "sweeps")
    assert "a/b/ok/plan.parquet" in keys and not any("probe" in k for k in keys), keys
    r = sweep(["status", "s3://sweeps/a/b/ok"], env=_aws(endpoint))
    assert r.returncode == 0 and "1 trials planned" in r.stdout, r.stderr


def test_two_write_probes_of_one_new_prefix_leave_each_other_alone(s3, monkeypatch):
    """Two drivers probe the same new prefix at once (CI saw the second refused with "cannot
    write to ... Path does not exist"): the first one's cleanup removed the prefix's marker
    with pyarrow's recursive ``delete_dir``, taking the other's probe with it (and a lock, had
    the other got that far). A probe's cleanup now removes that probe alone: a peer's probe
    and lock stay, and a probe a peer took already is no error. Here the peer's probe and lock
    are written between this probe's write and its removal, where a listing could not see
    them in time (a review reproduced that window with a check of the listing first)."""
    from workers.results import storage

    endpoint, client = s3
    client.create_bucket(Bucket="peers")
    for k, v in _aws(endpoint).items():
        monkeypatch.setenv(k, v)
    location = "s3://peers/a/new"
    st = storage.store(location)
    write, peer = storage.Store.write_bytes, storage.PROBE_PREFIX + "2-b"

    def and_a_peer(self, rel, data, *a, **kw):  # the peer's probe and lock, at once
        write(self, rel, data, *a, **kw)
        if rel.startswith(storage.PROBE_PREFIX) and rel != peer:
            write(self, peer, b"")
            write(self, "driver.lock", b"{}")

    monkeypatch.setattr(storage.Store, "write_bytes", and_a_peer)
    storage.check_location(location, write=True)
    left = [k for k in _keys(client, "peers") if not k.endswith("/")]
    assert sorted(left) == sorted(
        ["a/new/" + peer, "a/new/driver.lock"]), left
    monkeypatch.setattr(storage.Store, "write_bytes", write)
    storage._remove_probe(st, peer)
    storage._remove_probe(st, peer)  # taken already (by a peer's cleanup): no error
    assert [k for k in _keys(client, "peers") if not k.endswith("/")] == ["a/new/driver.lock"]


# ---------------------------------------------------------------------------------------------
# Local paths that cannot be written (as root, permission bits do not stop a write: /proc and a
# path under a file do)

@pytest.mark.parametrize("location, words", [
    ("/proc/sweep-test-out", ("cannot write to /proc/sweep-test-out",)),
    ("/etc/hostname/x", ("/etc/hostname is a file, not a directory",)),
])
@pytest.mark.parametrize("command", ["plan", "launch"])
def test_a_local_out_that_cannot_be_written_is_one_line(command, location, words):
    one_line(sweep(COMMANDS[command](location)), *words)


# ---------------------------------------------------------------------------------------------
# Ray: cluster.address

@pytest.fixture
def planned(tmp_path):
    out = tmp_path / "s"
    assert main(["plan", *TINY, f"out={out}"]) == 0
    return out


def test_a_cluster_address_where_nothing_listens_is_one_line(planned, tmp_path):
    """launch, resume and measure on a closed port of 127.0.0.1: one line at once (Ray's own
    connect would retry for minutes), before the plan is written."""
    address = f"127.0.0.1:{_free_port()}"
    new = tmp_path / "new"
    r = sweep(["launch", *TINY, f"out={new}", f"cluster.address={address}"], timeout=120)
    one_line(r, f"nothing answers at {address}", "ray start --head", "cluster.address=null")
    assert not new.exists()
    before = sorted(p.relative_to(planned).as_posix() for p in planned.rglob("*"))
    for command in ("resume", "measure"):
        r = sweep([command, str(planned), f"cluster.address={address}"], timeout=120)
        one_line(r, f"nothing answers at {address}")
    assert sorted(p.relative_to(planned).as_posix() for p in planned.rglob("*")) == before
    r = sweep(["launch", *TINY, f"out={new}", "cluster.address=127.0.0.1"], timeout=120)
    one_line(r, "'127.0.0.1' is not an address", "HOST:PORT")


HEAD = """
import logging, sys
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.mark.slow
def test_a_cluster_that_wants_a_token_the_driver_lacks_is_one_line(planned, tmp_path):
    """A Ray head with token authentication (Ray's default for a new cluster): a driver
    without a token, and one with another token, get one line naming the token and where to
    put it, at once (Ray's own connect warns every second for 20 s, then raises a
    ConnectionError that does not say why); with the token the sweep runs there."""
    import psutil

    home = tmp_path / "home"  # no ~/.ray/auth_token for anyone here
    home.mkdir()
    token = os.urandom(16).hex()
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True,
                            env={**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
                                 "RAY_AUTH_TOKEN": token})
    started: list = []  # the head's Ray processes
    try:
        address = read_line(head, 180)
        assert address, "the Ray head did not start (no address within 180 s)"
        started = psutil.Process(head.pid).children(recursive=True)
        port = address.rpartition(":")[2]
        at = f"127.0.0.1:{port}"
        no_token = {"HOME": str(home)}
        r = sweep(["resume", str(planned), f"cluster.address={at}"],
                  env={**no_token, "RAY_AUTH_MODE": "disabled"}, timeout=120)
        one_line(r, "requires an authentication token", "sends no token", "RAY_AUTH_TOKEN")
        r = sweep(["measure", str(planned), f"cluster.address={at}"],
                  env={**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x" * 32},
                  timeout=120)
        one_line(r, "requires an authentication token", "not the cluster's")
        r = sweep(["resume", str(planned), f"cluster.address={at}"],
                  env={**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                  timeout=300)
        assert r.returncode == 0, r.stderr
        assert "1 ok" in r.stderr
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_tree(head.pid)  # the head and what it started (its session), if still there
        for p in started:  # what Ray's shutdown left, by PID
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_runtime_that_fails_or_hangs_its_probe_is_said_to_be_gone(monkeypatch):
    """``runtime_lost``'s probe of the cluster: an answer is a live runtime; a query that
    raises names its error (before, it read as 'did not answer for 5 s' at once); one that
    hangs past RUNTIME_PROBE_S is named as such, the hung thread left behind."""
    import threading
    import types

    from sweep import runtime

    monkeypatch.setattr(runtime, "RUNTIME_PROBE_S", 0.3)
    live = types.SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    assert runtime.runtime_lost(live) is None

    def refused():
        raise ConnectionError("GCS at 127.0.0.1:6379 refused\nmore lines")

    assert runtime.runtime_lost(types.SimpleNamespace(cluster_resources=refused)) == (
        "the Ray runtime failed a cluster query (ConnectionError: GCS at 127.0.0.1:6379 refused)")
    gate = threading.Event()
    hung = types.SimpleNamespace(cluster_resources=lambda: gate.wait(30))
    assert runtime.runtime_lost(hung) == "the Ray runtime did not answer for 0.3 s"
    gate.set()
