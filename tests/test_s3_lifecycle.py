"""A sweep on an object store, end to end (issue #25 item 2): a moto S3 server on 127.0.0.1 (the
``s3`` fixture, tests/s3server.py) and ``out=s3://...`` through the CLI, in subprocesses as a
user runs it: launch, status, resume after a deleted and after a truncated result, ``sweep
measure`` (a new measure from the saved weights), report, compact, ``load_results``, two
drivers racing for the lock; and a multi-node loopback Ray cluster whose workers write to the
bucket with no shared disk (nothing lands in a local directory). The commands that start Ray
(launch, resume, measure) run in subprocesses; status, report and compact, which read and
write the bucket from the driver alone, run through ``sweep.cli.main`` in this process (the
same code and environment, without a Python start and torch import for each)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from procs import kill_tree, run
from s3server import aws_env, keys

pytestmark = pytest.mark.slow

TINY = ["space.width=[8,16]", "space.depth=[2]", "train.steps=10", "dataset.train_size=100",
        "dataset.test_size=40", "space.batch_size=[32]", "progress=false", "figure=false",
        "measures=[jacobian_norm_test]", "cluster.num_cpus=2"]
VALUES = ["trial_id", "status", "train_acc", "test_acc", "jacobian_norm_test"]


def sweep(args, endpoint: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **aws_env(endpoint), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return run([sys.executable, "-m", "sweep.cli", *args], capture_output=True, text=True,
               timeout=timeout, env=env, cwd=cwd)


def here(args, capsys) -> subprocess.CompletedProcess:
    """``sweep ARGS`` through ``sweep.cli.main`` in this process (its environment and working
    directory: the test's), as a CompletedProcess with what it printed."""
    from sweep.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    return r


def stamps(client, bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix`` (an ETag changes when an object is put)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def frame(loc: str):
    from analysis import load_results

    return load_results(loc)[VALUES].sort_values("trial_id").reset_index(drop=True)


def test_the_whole_lifecycle_on_an_s3_bucket(s3, tmp_path, monkeypatch, capsys):
    endpoint, client = s3
    for k, v in aws_env(endpoint).items():  # load_results in this process reads the bucket too
        monkeypatch.setenv(k, v)
    client.create_bucket(Bucket="lifecycle")
    loc = "s3://lifecycle/runs/x"
    cwd = tmp_path / "cwd"  # the commands run here: nothing may be written to it
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # (those run in this process too)

    # launch: every result, weight and the journal in the bucket
    r = ok(sweep(["launch", *TINY, "trials=4", "save_weights=true", f"out={loc}"], endpoint,
                 cwd=cwd))
    assert "4 to run" in r.stderr
    trials = [k for k in keys(client, "lifecycle", "runs/x/trials/") if k.endswith(".parquet")]
    assert len(trials) == 4
    assert len(keys(client, "lifecycle", "runs/x/weights/")) == 4
    assert keys(client, "lifecycle", "runs/x/journal/")
    assert "runs/x/plan.parquet" in keys(client, "lifecycle", "runs/x/")
    before = frame(loc)
    assert len(before) == 4 and (before.status == "ok").all()
    r = ok(here(["status", loc], capsys))
    assert "4/4" in r.stdout, r.stdout

    # one result deleted, one truncated: status says so, resume runs those two (only)
    gone, cut = trials[0], trials[1]
    client.delete_object(Bucket="lifecycle", Key=gone)
    body = client.get_object(Bucket="lifecycle", Key=cut)["Body"].read()
    client.put_object(Bucket="lifecycle", Key=cut, Body=body[:100])
    kept = {k: v for k, v in stamps(client, "lifecycle", "runs/x/trials/").items()
            if k in trials[2:]}
    r = ok(here(["status", loc], capsys))
    assert "invalid" in r.stdout and "pending" in r.stdout, r.stdout
    r = ok(sweep(["resume", loc], endpoint, cwd=cwd))
    assert "2 already have results, 2 to run" in r.stderr, r.stderr[-2000:]
    assert keys(client, "lifecycle", "runs/x/trials/invalid/")  # the truncated file, kept aside
    after = stamps(client, "lifecycle", "runs/x/trials/")
    assert {k: after[k] for k in kept} == kept  # the two good results untouched
    assert frame(loc).equals(before)  # the re-runs reproduce the lost numbers (CPU)
    r = ok(here(["status", loc], capsys))
    assert "4/4" in r.stdout and "invalid" not in r.stdout.replace("invalid: 0", ""), r.stdout

    # a new measure from the saved weights: the results stay as they are
    results = stamps(client, "lifecycle", "runs/x/trials/")
    ok(sweep(["measure", loc, "measures=[jacobian_norm_test,l2]"], endpoint, cwd=cwd))
    assert stamps(client, "lifecycle", "runs/x/trials/") == results
    from analysis import load_results

    df = load_results(loc)
    assert len(df) == 4 and df["l2"].notna().all() and (df["l2"] > 0).all()
    assert len([k for k in keys(client, "lifecycle", "runs/x/measures/")
                if ".l2." in k]) == 4

    # report and compact; load_results reads the compacted copy with the same values
    ok(here(["report", loc], capsys))
    assert "runs/x/report/report.html" in keys(client, "lifecycle", "runs/x/report/")
    ok(here(["compact", loc], capsys))
    compacted = [k for k in keys(client, "lifecycle", "runs/x/") if "compact" in k]
    assert compacted, keys(client, "lifecycle", "runs/x/")
    assert frame(loc).equals(before)
    assert list(cwd.iterdir()) == []  # nothing written locally


def test_two_drivers_racing_for_an_s3_sweep_one_is_refused_in_one_line(s3, tmp_path):
    """Both start together; the lock (one PUT, read back after SETTLE_S) lets one run and the
    other exits 2 with one line naming the holder."""
    endpoint, client = s3
    client.create_bucket(Bucket="race")
    cmd = [sys.executable, "-m", "sweep.cli", "launch", "dry_run=true", "trials=3",
           "out=s3://race/T", "progress=false", "figure=false", "cluster.num_cpus=1"]
    env = {**os.environ, **aws_env(endpoint), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=tmp_path, start_new_session=True) for _ in range(2)]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            kill_tree(p.pid)
    results = sorted((p.returncode, err) for p, err in zip(procs, errs))
    assert [rc for rc, _ in results] == [0, 2], results
    loser = results[1][1].strip()  # its plan's lines, then the refusal: one line, no traceback
    errors = [ln for ln in loser.splitlines() if ln.startswith("sweep: error: ")]
    assert "Traceback" not in loser and errors == [loser.splitlines()[-1]], loser
    assert "is being run by another driver" in errors[0], loser
    lines = [ln for k in keys(client, "race", "T/journal/")
             for ln in client.get_object(Bucket="race", Key=k)["Body"].read().decode().splitlines()
             if ln.strip()]
    assert len(lines) == 3  # the trials ran once, by the winner
    assert "T/driver.lock" not in keys(client, "race", "T/")


CLUSTER = textwrap.dedent("""
    import json, os, sys
    from ray.cluster_utils import Cluster
    from sweep.config import compose
    from sweep.driver import launch

    out, head_dir, node_dirs = sys.argv[1], sys.argv[2], sys.argv[3:5]
    os.chdir(head_dir)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    for d in node_dirs:  # each worker node's processes start in a directory of their own
        os.chdir(d)
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    os.chdir(head_dir)
    cluster.wait_for_nodes()
    launch(compose(sys.argv[5:] + [f"out={out}", f"cluster.address={cluster.address}"]))
    import ray
    hosts = sorted({n["NodeID"] for n in ray.nodes() if n["Alive"]})
    print("NODES " + json.dumps(len(hosts)), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


def test_worker_nodes_write_to_the_bucket_without_a_shared_disk(s3, tmp_path, monkeypatch):
    """A head without CPUs and two worker nodes on loopback, each started in an empty
    directory of its own: every trial runs on a worker node, its files reach the bucket, and
    no directory gets a local file."""
    endpoint, client = s3
    for k, v in aws_env(endpoint).items():
        monkeypatch.setenv(k, v)
    client.create_bucket(Bucket="nodes")
    dirs = [tmp_path / n for n in ("head", "node1", "node2")]
    for d in dirs:
        d.mkdir()
    env = {**os.environ, **aws_env(endpoint), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    r = run([sys.executable, "-c", CLUSTER, "s3://nodes/x", *map(str, dirs),
             *TINY[:-1], "trials=4", "save_weights=true"],
            capture_output=True, text=True, timeout=600, env=env, cwd=dirs[0])
    assert r.returncode == 0, r.stderr[-3000:]
    df = frame("s3://nodes/x")
    assert len(df) == 4 and (df.status == "ok").all() and df.trial_id.is_unique
    assert len([k for k in keys(client, "nodes", "x/trials/") if k.endswith(".parquet")]) == 4
    assert len(keys(client, "nodes", "x/weights/")) == 4
    assert len([k for k in keys(client, "nodes", "x/measures/") if k.endswith(".parquet")]) == 4
    for d in dirs:
        assert [p for p in d.rglob("*") if p.is_file()] == [], d
