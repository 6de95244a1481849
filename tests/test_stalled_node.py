"""A worker node that stalls and wakes up (issue #25 item 3).

A loopback ``ray.cluster_utils.Cluster`` (a head without CPUs, two worker nodes of one CPU) in
a child process, with Ray's health check shortened so that a silent node is declared dead
within seconds, and its gRPC keepalive shortened so that the driver's call running a task on
the frozen node fails within seconds too (a frozen node's connections stay open: only an
unanswered keepalive ping ends that call, after sweep.runtime.DRIVER_KEEPALIVE_S + its timeout
in a sweep, 420 s with Ray's defaults). Mid-sweep one worker node is frozen (SIGSTOP to its
raylet and every process under it: its workers and agents); Ray declares it dead, the task
there ends with NodeDiedError, the driver submits its trial again on the other node, and the
sweep finishes. Then the frozen node's workers are woken (SIGCONT) while
its raylet stays frozen, so the stale attempt runs on to its writes as a partitioned node's
would; last the raylet is woken (it learns it was declared dead and exits). The stale attempt's
late writes are dropped (logged): every result, measure value, checkpoint and journal line the
retry and the driver wrote stays byte for byte, and ``load_results`` shows each trial once.
Checkpoints are on, so the frozen attempt is also one that was writing a trial's checkpoints.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from procs import kill_tree

TINY = ["trials=5", "dataset.train_size=200", "dataset.test_size=60", "train.steps=1000",
        "train.early_stop=false", "train.check_every=250", "space.width=[32]",
        "space.depth=[2]", "space.batch_size=[32]", "space.optimizer=[sgd,adam]",
        "measures=[jacobian_norm_test,l2]", "progress=false", "figure=false",
        "save_weights=true", "train.checkpoint_every=100", "train.keep_checkpoints=true",
        "resources.max_retries=5"]

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path

    import psutil
    from ray.cluster_utils import Cluster

    from sweep.config import compose
    from sweep.driver import launch

    out = Path(sys.argv[1])
    t0 = time.monotonic()
    stamp = lambda what: print(f"{what} at {time.monotonic() - t0:.1f} s", file=sys.stderr,
                               flush=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 1000,
                           "health_check_period_ms": 500, "health_check_timeout_ms": 500,
                           "health_check_failure_threshold": 4,
                           # every process's, the driver's too (the cluster's config wins over
                           # sweep.runtime's default): its servers then accept pings this often
                           "grpc_client_keepalive_time_ms": 2000,
                           "grpc_client_keepalive_timeout_ms": 2000}})
    nodes = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    cluster.wait_for_nodes()
    stamp("cluster up")
    frozen = nodes[0]
    raylet = psutil.Process(frozen.all_processes["raylet"][0].process.pid)
    state = {}

    def freezer():
        while len(list((out / "trials").glob("*.parquet"))) < 1:
            time.sleep(0.05)
        time.sleep(0.5)  # (mid-trial: each node is on its next trial by now)
        procs = raylet.children(recursive=True)  # its workers and agents
        raylet.send_signal(signal.SIGSTOP)
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        state["pids"] = [p.pid for p in procs]
        state["done_before"] = len(list((out / "trials").glob("*.parquet")))
        stamp("frozen")

    t = threading.Thread(target=freezer, daemon=True)
    t.start()
    launch(compose(sys.argv[2:] + [f"out={out}", f"cluster.address={cluster.address}"]))
    stamp("sweep done")
    t.join(timeout=60)
    import ray
    state["dead"] = sum(not n["Alive"] for n in ray.nodes())
    state["keepalive_ms"] = ray._config.grpc_client_keepalive_time_ms()  # the driver's
    ray.shutdown()
    print("FROZEN " + json.dumps(state), flush=True)
    # the test snapshots the sweep directory, then says go
    sys.stdin.readline()
    for pid in state["pids"]:  # the workers first: the stale attempt runs on to its writes
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    logs = Path(frozen.get_logs_dir_path())
    deadline = time.monotonic() + 90
    seen = ""
    while time.monotonic() < deadline:
        seen = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*")
                       if p.is_file())
        if "result (status" in seen and "is dropped" in seen:
            break
        time.sleep(0.5)
    stamp("stale writes seen")
    raylet.send_signal(signal.SIGCONT)  # it learns it was declared dead and exits
    print("WOKE " + json.dumps([ln for ln in seen.splitlines() if "dropped" in ln]), flush=True)
    cluster.shutdown()
    stamp("cluster down")
""")


def snapshot(out: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file the sweep's writers own (results, measure values,
    checkpoints, the journal, weights, the plan)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] in
            ("trials", "measures", "checkpoints", "journal", "weights", "plan.parquet")
            and not (p.name.startswith(".") and p.name.endswith(".tmp"))}  # (a frozen
    # writer's temporary file, before its atomic rename: not a file of the sweep's)


@pytest.mark.slow
def test_a_node_that_stalls_and_wakes_up_overwrites_nothing(tmp_path):
    import subprocess

    from analysis import load_results
    from workers.results.index import read_journal

    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), *TINY], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ""
        while not line.startswith("FROZEN "):
            line = proc.stdout.readline()
            if not line:
                pytest.fail("the sweep ended early:\n" + proc.stderr.read()[-4000:])
        state = json.loads(line[len("FROZEN "):])
        assert state["dead"] >= 1, state  # Ray declared the frozen node dead
        assert state["keepalive_ms"] == 2000, state  # the cluster's, not sweep.runtime's
        assert 1 <= state["done_before"] < 5, state
        df = load_results(out)
        assert len(df) == 5 and df.trial_id.is_unique and (df.status == "ok").all(), df
        before = snapshot(out)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=300)
    finally:
        from procs import kill_tree

        kill_tree(proc.pid)
    assert proc.returncode == 0, err[-4000:]
    print("\n".join(ln for ln in err.splitlines() if " at " in ln and ln.endswith(" s")))
    woke = json.loads([ln for ln in rest.splitlines() if ln.startswith("WOKE ")][-1][5:])
    # the stale attempt did run on to its writes, and each was dropped
    assert any("result (status ok) is dropped" in ln for ln in woke), (woke, err[-3000:])
    after = snapshot(out)
    assert after.keys() == before.keys()
    changed = [k for k in after if after[k] != before[k]]
    assert changed == [], changed
    df2 = load_results(out)
    assert df2.equals(df)
    lines = [ln for f in (out / "journal").glob("*.tsv") for ln in f.read_text().splitlines()
             if ln.strip()]
    assert len(lines) == 5 and len(read_journal(out)) == 5  # each trial journaled once
    for tid, (status, size, mtime_ns) in read_journal(out).items():
        st = (out / "trials" / f"{tid}.parquet").stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns) and status == "ok"
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_the_driver_pings_a_silent_worker_sooner_than_rays_default(tmp_path):
    """sweep.runtime.start_ray: a driver connecting to a cluster uses DRIVER_KEEPALIVE_S /
    _TIMEOUT_S for its gRPC keepalive (so a task on a frozen node fails and is retried within 2
    minutes, not Ray's 7), a value the user set in the environment stays, and the environment
    is restored once Ray has started; a local Ray (one node) keeps Ray's defaults. Read from
    Ray's own config in child processes, against a loopback cluster started there."""
    connect = textwrap.dedent("""
        import json, os
        import ray
        from ray.cluster_utils import Cluster
        from sweep.config import compose
        from sweep.runtime import start_ray
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        try:
            start_ray(compose([f"cluster.address={c.address}"]))
            print(json.dumps([ray._config.grpc_client_keepalive_time_ms(),
                              ray._config.grpc_client_keepalive_timeout_ms(),
                              os.environ.get("RAY_grpc_client_keepalive_time_ms"),
                              os.environ.get("RAY_grpc_client_keepalive_timeout_ms")]))
            ray.shutdown()
        finally:
            c.shutdown()
    """)
    local = textwrap.dedent("""
        import json
        import ray
        from sweep.config import compose
        from sweep.runtime import start_ray
        start_ray(compose(["cluster.num_cpus=1"]))
        print(json.dumps([ray._config.grpc_client_keepalive_time_ms(),
                          ray._config.grpc_client_keepalive_timeout_ms()]))
        ray.shutdown()
    """)
    from sweep.runtime import DRIVER_KEEPALIVE_S

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_grpc_client_keepalive")}
    env.pop("RAY_ADDRESS", None)
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, **extra},
                              cwd=Path(__file__).resolve().parents[1], start_new_session=True)
             for code, extra in ((connect, {"RAY_grpc_client_keepalive_timeout_ms": "45000"}),
                                 (local, {}))]  # (the user's timeout in the first; both at once)
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            kill_tree(p.pid)
    got = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        got.append(json.loads(out.strip().splitlines()[-1]))
    assert got[0] == [DRIVER_KEEPALIVE_S * 1000, 45000, None, "45000"]
    assert DRIVER_KEEPALIVE_S * 1000 > 60000 and DRIVER_KEEPALIVE_S * 1000 < 300000
    assert got[1][0] != DRIVER_KEEPALIVE_S * 1000  # Ray's own (300 s in ray 2.x)


# ---- the guard itself, without Ray

def test_a_file_written_once_is_not_replaced(tmp_path):
    from workers.results.storage import Store

    st = Store(tmp_path / "s")
    assert st.write_new("trials/a.parquet", b"first")
    assert not st.write_new("trials/a.parquet", b"late")
    assert st.read_bytes("trials/a.parquet") == b"first"
    assert [p.name for p in (tmp_path / "s" / "trials").iterdir()] == ["a.parquet"]  # no temp


def _s3_location(s3, monkeypatch, bucket: str):
    """``s3://<bucket>/runs`` on the module's moto server (this process's pyarrow S3 clients
    pointed at it), and a reader of a file's bytes there through boto3, not the project's code."""
    from s3server import aws_env

    endpoint, client = s3
    for k, v in aws_env(endpoint).items():
        monkeypatch.setenv(k, v)
    client.create_bucket(Bucket=bucket)

    def read_bytes(loc: str, rel: str) -> bytes:
        key = f"{loc.removeprefix(f's3://{bucket}/')}/{rel}"
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    return f"s3://{bucket}/runs", read_bytes


def _a_late_row_is_dropped_and_said_so(loc, read_bytes):
    """``write_trial`` twice for one trial at sweep directory ``loc``: the first row is written
    and says so, with the row the file stores (checked against the file's bytes, read by
    ``read_bytes(loc, rel)`` and parsed with pyarrow); the second is dropped, says so, and the
    file stays byte for byte."""
    import io

    import pyarrow.parquet as pq

    from workers.results.layout import trial_file
    from workers.results.record import (SCHEMA_VERSION, SUMMARY_COLUMNS, WriteOutcome,
                                         write_trial)

    def row(status, acc):
        r = {c: None for c in SUMMARY_COLUMNS if c != "schema_version"}
        return {**r, "trial_id": "t0", "status": status, "train_acc": acc, "steps": 7}

    rel = trial_file("t0")
    first = write_trial(loc, row("ok", 0.5))  # the retry's
    stored = read_bytes(loc, rel)
    late = write_trial(loc, row("failed", 0.1))  # the stale attempt's, later
    assert (first.path, first.outcome, first.written) == (rel, "written", True)
    assert first.outcome is WriteOutcome.WRITTEN
    assert (late.path, late.outcome, late.written, late.summary) == (rel, "dropped", False, None)
    assert late.outcome is WriteOutcome.DROPPED
    assert read_bytes(loc, rel) == stored
    on_disk = pq.read_table(io.BytesIO(stored)).drop_columns(["points"]).to_pylist()[0]
    assert on_disk["train_acc"] == 0.5 and on_disk["status"] == "ok" and on_disk["steps"] == 7
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert first.summary == on_disk


def test_a_late_result_and_a_late_value_are_dropped_not_raised(tmp_path, caplog):
    from workers.results.measure_table import write_outcome
    from workers.results.measure_values import Outcome

    _a_late_row_is_dropped_and_said_so(str(tmp_path), lambda _, rel: (tmp_path / rel).read_bytes())
    assert "is dropped" in caplog.text
    assert write_outcome(tmp_path, "t0", Outcome("l2", 1.0, 1, {}, 0.0)) is not None
    assert write_outcome(tmp_path, "t0", Outcome("l2", 2.0, 1, {}, 0.0)) is None


def test_a_late_result_is_dropped_and_said_so_on_an_object_store(s3, monkeypatch, caplog):
    """The same guard on S3 (``Store.write_new`` looks the object up, then PUTs)."""
    loc, read_bytes = _s3_location(s3, monkeypatch, "write-once")
    _a_late_row_is_dropped_and_said_so(loc, read_bytes)
    assert "is dropped" in caplog.text


def test_a_stale_checkpoint_save_replaces_neither_a_later_step_nor_comes_after_a_result(
        tmp_path):
    import io

    import torch

    from workers.checkpoint import Checkpointer, Interval, checkpoint_file
    from workers.results.layout import trial_path

    def step_there():
        data = (tmp_path / checkpoint_file("t0")).read_bytes()
        return torch.load(io.BytesIO(data), weights_only=True)["step"]

    stale = Checkpointer(str(tmp_path), "t0", "{}", Interval(steps=10))
    retry = Checkpointer(str(tmp_path), "t0", "{}", Interval(steps=10))
    stale.save(10, {"w": torch.zeros(1)})
    assert retry.load()["step"] == 10
    retry.save(50, {"w": torch.ones(1)})
    stale.save(20, {"w": torch.zeros(1)})  # woke up: the checkpoint there is further on
    assert step_there() == 50 and stale.saves == 1
    retry.save(60, {"w": torch.ones(1)})
    assert step_there() == 60
    trial_path(tmp_path, "t0").parent.mkdir(parents=True, exist_ok=True)
    trial_path(tmp_path, "t0").write_bytes(b"a result")
    retry.save(70, {"w": torch.ones(1)})  # the trial has a result: no checkpoint after it
    assert step_there() == 60


def test_a_stale_attempt_writes_none_of_its_files_once_the_trial_has_a_result(tmp_path):
    """The review's case: a stale attempt reaching its writes after the retry finished must not
    replace the weights (nor measure values) that the standing result describes: a trial
    trained with another seed stands in for the retry's network, and its weights, record and
    values stay byte for byte."""
    from dataclasses import replace

    from workers.results.layout import trial_file, weights_file
    from workers.results.spec import DataSpec, RunContext, TrialSpec, TrainSpec
    from workers.trial import run_trial

    retry = TrialSpec(data=DataSpec("digits", train_size=100, test_size=40), width=8, depth=2,
                      activation="relu", optimizer="sgd", lr=0.01, batch_size=32,
                      init_scale=1.0, seed=1, train=TrainSpec(steps=20, early_stop=False))
    out = tmp_path / "s"
    ctx = RunContext(str(out), save_weights=True)
    run_trial(retry, ctx)
    stale = replace(retry, seed=2)  # another network, written under the retry's id below
    stale_id = stale.trial_id
    (out / "trials").mkdir(exist_ok=True)
    before = {p: (out / p).read_bytes() for p in (trial_file(retry.trial_id),
                                                   weights_file(retry.trial_id))}
    for p, b in before.items():  # the retry's files, as if they were the stale trial's
        target = out / p.replace(retry.trial_id, stale_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b)
    kept = {p.replace(retry.trial_id, stale_id): b for p, b in before.items()}
    measures_before = sorted(p.name for p in (out / "measures").glob(f"{stale_id}.*"))
    run_trial(stale, ctx)  # the stale attempt reaches its writes
    assert {p: (out / p).read_bytes() for p in kept} == kept
    assert sorted(p.name for p in (out / "measures").glob(f"{stale_id}.*")) == measures_before


def _reads_of(monkeypatch, rel: str) -> list[str]:
    """A list that gains the method's name at every read of ``rel`` through a Store (its read
    functions wrapped, on every backend)."""
    from workers.results.storage import Store

    reads = []
    for name in ("parquet_file", "read_parquet", "read_bytes"):
        def counted(self, r, *args, _read=getattr(Store, name), _name=name, **kwargs):
            if r == rel:
                reads.append(_name)
            return _read(self, r, *args, **kwargs)

        monkeypatch.setattr(Store, name, counted)
    return reads


def _returns_what_stands(fresh, out, read_bytes, monkeypatch, caplog, **ctx):
    """``run_trial`` returns the record on disk, reading it back only when its write was
    dropped. At ``fresh`` (no other attempt) its own record, not read back; at ``out``, after
    another attempt's result (a hand-made ``failed`` one) stands, its ``ok`` is dropped and what
    it returns (what the driver journals) is the standing row, read back once. Both are checked
    against the file's bytes (``read_bytes(loc, rel)``) parsed with pyarrow."""
    import io
    import math

    import pyarrow.parquet as pq

    from workers.results.layout import trial_file
    from workers.results.record import write_trial
    from workers.results.spec import DataSpec, RunContext, TrialSpec, TrainSpec
    from workers.trial import failure_summary, run_trial

    spec = TrialSpec(data=DataSpec("digits", train_size=100, test_size=40), width=8, depth=2,
                     activation="relu", optimizer="sgd", lr=0.01, batch_size=32,
                     init_scale=1.0, seed=1, train=TrainSpec(steps=20, early_stop=False))
    rel = trial_file(spec.trial_id)

    def on_disk(loc):
        t = pq.read_table(io.BytesIO(read_bytes(loc, rel)))
        return t.drop_columns(["points"]).to_pylist()[0]

    def same(a, b):
        return a.keys() == b.keys() and all(
            a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float)
                             and math.isnan(a[k]) and math.isnan(b[k])) for k in a)

    reads = _reads_of(monkeypatch, rel)
    own = run_trial(spec, RunContext(fresh, **ctx))  # no other attempt: its own record
    assert reads == []  # written, so not read back
    assert own["status"] == "ok" and same(own, on_disk(fresh))

    write_trial(out, failure_summary(spec, "failed", "WorkerCrashedError: the retry's record"))
    before = read_bytes(out, rel)
    got = run_trial(spec, RunContext(out, **ctx))  # ends ok; its write is dropped
    assert "result (status ok) is dropped" in caplog.text
    assert read_bytes(out, rel) == before
    assert len(reads) == 1  # the standing record, read back
    assert got["status"] == "failed" and got["error"] == "WorkerCrashedError: the retry's record"
    assert same(got, on_disk(out)) and math.isnan(got["train_acc"])


def test_an_attempt_whose_result_is_dropped_returns_the_result_that_stands(
        tmp_path, monkeypatch, caplog):
    _returns_what_stands(str(tmp_path / "fresh"), str(tmp_path / "s"),
                         lambda loc, rel: (Path(loc) / rel).read_bytes(), monkeypatch, caplog)


def test_on_an_object_store_only_a_dropped_write_is_read_back(s3, monkeypatch, caplog):
    """The same on S3, where the read back is a GET (a dry run: the write path, no training)."""
    loc, read_bytes = _s3_location(s3, monkeypatch, "read-back")
    _returns_what_stands(f"{loc}/fresh", f"{loc}/s", read_bytes, monkeypatch, caplog,
                         dry_run=True)
