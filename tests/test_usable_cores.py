"""``workers.cores.usable_cores``: the CPUs this process may use, not every core of the machine
(a SLURM job's cpuset or ``taskset``: the affinity mask; a cgroup CPU quota: a Kubernetes pod,
``docker --cpus``), by which ``statistics_table(processes=None)`` (as ``sweep report`` runs it)
and a local Ray without ``cluster.num_cpus`` are sized."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path, v2=None, v1=None, leaf="job_7/step_0"):
    """A fake cgroup tree: ``v2`` {relative dir: cpu.max text}, ``v1`` (quota, period) files."""
    root = tmp_path / "cgroup"
    (root / leaf).mkdir(parents=True)
    for rel, text in (v2 or {}).items():
        (root / rel / "cpu.max").write_text(text)
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::/{leaf}\n")
    return root, proc


@pytest.mark.parametrize("v2, v1, limit, cap", [
    ({}, None, None, None),  # no limit anywhere
    ({"": "max 100000\n"}, None, None, None),  # the root unlimited
    ({"": "150000 100000\n"}, None, 1.5, 2),  # a container's quota of 1.5 CPUs: 2 processes
    ({"": "50000 100000\n"}, None, 0.5, 1),
    ({"job_7": "400000 100000\n", "job_7/step_0": "max 100000\n"}, None, 4.0, 4),  # ancestor
    ({"job_7": "800000 100000\n", "job_7/step_0": "300000 100000\n"}, None, 3.0, 3),  # tightest
    ({"job_7": "100000 100000\n", "job_7/step_0": "300000 100000\n"}, None, 1.0, 1),
    ({"": "garbage\n"}, None, None, None),
    ({}, (200000, 100000), 2.0, 2),  # cgroup v1
    ({}, (-1, 100000), None, None),  # v1 without a quota
])
def test_a_cgroup_quota_caps_the_cores(tmp_path, v2, v1, limit, cap):
    from workers.cores import cgroup_cpu_limit, usable_cores

    root, proc = _tree(tmp_path, v2, v1)
    mask = len(os.sched_getaffinity(0))
    assert usable_cores(root, proc) == (mask if cap is None else max(1, min(mask, cap)))
    got = cgroup_cpu_limit(root, proc)
    assert got == (None if limit is None else pytest.approx(limit))
    assert usable_cores(tmp_path / "absent", tmp_path / "absent") == mask


def test_a_cgroup_v1_quota_is_read_along_the_processs_own_path(tmp_path):
    """cgroup v1 on a host (systemd's ``CPUQuota`` of a slice): the cpu controller's path from
    /proc/self/cgroup, then its ancestors; a path that is not under the mount (a container's
    view of the host's path) falls back to the mount's root."""
    from workers.cores import cgroup_cpu_limit

    root = tmp_path / "cg"
    for rel, q in (("", -1), ("user.slice", 300000), ("user.slice/job.scope", -1)):
        d = root / "cpu,cpuacct" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.cfs_quota_us").write_text(f"{q}\n")
        (d / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc"
    proc.write_text("4:memory:/user.slice\n2:cpu,cpuacct:/user.slice/job.scope\n0::/\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)  # the slice above the scope
    proc.write_text("2:cpu,cpuacct:/docker/abc\n")  # not under the mount: its root, unlimited
    assert cgroup_cpu_limit(root, proc) is None
    (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("50000\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)


def _memory_tree(tmp_path, v2=None, v1=None, proc_text="0::/job/step\n"):
    """A fake cgroup tree with memory files: ``v2`` {rel: (max, current, inactive_file)}, ``v1``
    {rel: (limit, usage, total_inactive_file)} under memory/."""
    root = tmp_path / "cgm"
    root.mkdir()
    for rel, (mx, cur, inact) in (v2 or {}).items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(f"{mx}\n")
        (d / "memory.current").write_text(f"{cur}\n")
        (d / "memory.stat").write_text(f"anon 5\ninactive_file {inact}\nactive_file 7\n")
    for rel, (lim, use, inact) in (v1 or {}).items():
        d = root / "memory" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(f"{lim}\n")
        (d / "memory.usage_in_bytes").write_text(f"{use}\n")
        (d / "memory.stat").write_text(f"cache 1\ntotal_inactive_file {inact}\n")
    proc = tmp_path / "proc_mem"
    proc.write_text(proc_text)
    return root, proc


GIB = 1 << 30


@pytest.mark.parametrize("v2, v1, proc_text, room", [
    ({}, None, "0::/job/step\n", None),
    ({"": ("max", 5, 0), "job": ("max", 5, 0), "job/step": ("max", 5, 0)}, None,
     "0::/job/step\n", None),
    # a SLURM job's --mem=4G: 4 GiB - (3 GiB in use - 1 GiB of inactive cache)
    ({"job": (4 * GIB, 3 * GIB, GIB), "job/step": ("max", 3 * GIB, GIB)}, None,
     "0::/job/step\n", 2 * GIB),
    ({"job": (8 * GIB, GIB, 0), "job/step": (2 * GIB, GIB, 0)}, None, "0::/job/step\n", GIB),
    ({"job": (GIB, 2 * GIB, 0)}, None, "0::/job\n", 0),  # over its limit: no room, not < 0
    (None, {"": (2**63 - 4096, GIB, 0), "slurm/uid_1/job_9": (6 * GIB, 2 * GIB, GIB)}, 
     "4:memory:/slurm/uid_1/job_9\n0::/\n", 5 * GIB),
    (None, {"": (2**63 - 4096, GIB, 0)}, "4:memory:/slurm/job_9\n", None),
    (None, {"": (3 * GIB, GIB, 0)}, "4:memory:/docker/abc\n", 2 * GIB),  # a container's view
    # a leaf that is not visible: from the deepest part that is
    ({"job": (4 * GIB, GIB, 0)}, None, "0::/job/step (deleted)\n", 3 * GIB),
    ({"job": (4 * GIB, GIB, 0)}, None, "0::/job/step/task_0\n", 3 * GIB),
    ({"": (4 * GIB, GIB, 0)}, None, "0::/../elsewhere\n", 3 * GIB),  # never above the mount
])
def test_the_cgroup_memory_headroom_is_the_tightest_along_the_path(tmp_path, monkeypatch, v2, v1,
                                                                    proc_text, room):
    import types

    import psutil

    from workers.cores import cgroup_memory_headroom, usable_memory

    root, proc = _memory_tree(tmp_path, v2, v1, proc_text)
    assert cgroup_memory_headroom(root, proc) == room
    for avail in (64 * GIB, GIB // 2):  # the machine's available memory, then less than room
        monkeypatch.setattr(psutil, "virtual_memory",
                            lambda: types.SimpleNamespace(available=avail, total=128 * GIB))
        assert usable_memory(root, proc) == (avail if room is None else min(avail, room))


def test_a_memory_limit_whose_usage_cannot_be_read_counts_whole(tmp_path):
    from workers.cores import cgroup_memory_headroom

    root, proc = _memory_tree(tmp_path, {"job": (4 * GIB, GIB, 0)}, None, "0::/job\n")
    (root / "job" / "memory.current").unlink()
    assert cgroup_memory_headroom(root, proc) == 4 * GIB


def test_a_local_ray_gets_the_usable_cores_when_none_are_configured(monkeypatch):
    """``sweep.runtime.start_ray`` with ``cluster.num_cpus`` null asks Ray for
    ``usable_cores()`` CPUs (Ray's own count ignores the affinity mask); a configured count
    stands."""
    import types

    import ray

    from sweep import runtime

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(runtime, "check_loopback", lambda r: None)
    monkeypatch.setattr(runtime, "_start_reaper", lambda r: None)
    monkeypatch.setattr("workers.cores.usable_cores", lambda *a: 3)
    for configured, want in ((None, 3), (5, 5)):
        cfg = types.SimpleNamespace(cluster=types.SimpleNamespace(address=None,
                                                                  num_cpus=configured))
        runtime.start_ray(cfg)
        assert seen["num_cpus"] == want


def test_trials_asking_more_cpus_than_any_node_has_are_refused_in_one_line():
    """``sweep.runtime.check_trials_fit`` on a local Ray: a trial runs on one node; asking for
    more CPUs than the largest live node has would wait forever (a local Ray sized by
    ``usable_cores`` inside a one-CPU allocation, with ``resources.cpus_per_trial=2``)."""
    import types

    from sweep.config import ConfigError
    from sweep.runtime import check_trials_fit

    nodes = [{"Alive": True, "Resources": {"CPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 8.0}}]  # a dead node does not count
    ray = types.SimpleNamespace(nodes=lambda: nodes, cluster_resources=lambda: {"CPU": 1.0})
    assert check_trials_fit(ray, 1, 0, True, local=True) is None
    assert check_trials_fit(ray, 0.5, 0, True, local=True) is None
    with pytest.raises(ConfigError) as e:
        check_trials_fit(ray, 2, 0, True, local=True)
    assert str(e.value) == (
        "resources.cpus_per_trial: 2, but the largest node of the Ray runtime has 1 CPUs (a "
        "trial runs on one node); allowed: resources.cpus_per_trial at most 1 (a local Ray: the "
        "CPUs this process may use, its affinity mask or cgroup quota), or cluster.num_cpus=N "
        "for a local Ray of N CPUs")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a machine with 2 CPUs")
def test_the_report_runs_on_the_cpus_of_its_affinity_mask_not_the_machines():
    """Pinned to one CPU (as `taskset -c 0` or a one-CPU SLURM job on a bigger node), a table
    large enough to run in processes runs in one: the progress callback says how many."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
        import numpy as np, pandas as pd
        from analysis.stats import PARALLEL_ABOVE, FIXED_COST_TRIALS, statistics_table
        rng = np.random.default_rng(0)
        n = 2000
        df = pd.DataFrame({{"width": rng.choice([8, 16, 32], n), "depth": rng.choice([2, 3], n),
                           "seed": rng.integers(1, 4, n)}})
        df["gen_gap"] = rng.normal(size=n)
        df["m"] = df["gen_gap"] + rng.normal(size=n)
        n_boot = -(-PARALLEL_ABOVE // (n + FIXED_COST_TRIALS))
        seen = set()
        if __name__ == "__main__":
            statistics_table(df, ["m"], by=None, n_boot=n_boot, processes=None,
                             hyperparameters=["width", "depth"],
                             progress=lambda done, total, p: seen.add(p))
            print("PROCESSES", sorted(seen))
    """)
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"usable_cores_{os.getpid()}.py"
    script.write_text(code)
    try:
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=600)
    finally:
        script.unlink()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PROCESSES [1]" in r.stdout, r.stdout + r.stderr[-2000:]


def _cli(args, timeout=600):
    """``sweep ARGS`` in a fresh process (no Ray of this test process's in the way)."""
    from procs import run

    return run([sys.executable, "-m", "sweep.cli", *args], capture_output=True, text=True,
               timeout=timeout, cwd=ROOT)


def test_a_new_sweeps_trials_larger_than_the_local_ray_are_refused_before_it_is_planned(
        tmp_path):
    """`sweep launch` of a new sweep refuses trials that ask for more CPUs than the local Ray
    will have in one line, exit 2, before the plan is made or anything written
    (``sweep.runtime.check_resources``; before, the refusal came once Ray ran, after the plan
    was written), naming where the count comes from."""
    out = tmp_path / "s"
    r = _cli(["launch", "trials=2", f"out={out}", "cluster.num_cpus=1",
              "resources.cpus_per_trial=2"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert "resources.cpus_per_trial: 2, but cluster.num_cpus is 1; allowed: at most 1" \
        in r.stderr
    assert not out.exists()  # no plan, no sweep.json, no lock
    r = _cli(["launch", "trials=2", f"out={out}", "resources.cpus_per_trial=999"])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert f"but this process may use {len(os.sched_getaffinity(0))} CPUs (its affinity mask" \
        in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_planned_sweep_is_checked_once_it_has_trials_to_run(tmp_path):
    """A finished sweep resumed or measured on a smaller machine with nothing to do ends as
    before (exit 0: the check is for trials that run); a planned one with trials left is
    refused in one line by the check ``Tasks`` makes, and no trial is recorded."""
    out = tmp_path / "f"
    small = ["space.width=[8]", "space.depth=[2]", "train.steps=10", "dataset.train_size=100",
             "dataset.test_size=40", "space.batch_size=[32]", "progress=false", "figure=false",
             "measures=[jacobian_norm_test]", "save_weights=true"]
    r = _cli(["launch", "trials=2", f"out={out}", *small, "cluster.num_cpus=2",
              "resources.cpus_per_trial=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    fewer = ["cluster.num_cpus=1"]
    r = _cli(["resume", str(out), *fewer])
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr[-3000:]
    r = _cli(["measure", str(out), *fewer])
    assert r.returncode == 0 and "nothing to evaluate" in r.stderr, r.stderr[-3000:]
    planned = tmp_path / "p"
    r = _cli(["plan", "trials=2", f"out={planned}", *small, "resources.cpus_per_trial=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(["resume", str(planned), *fewer])
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith(
        "sweep: error: resources.cpus_per_trial: 2, but the largest node of the Ray runtime "
        "has 1 CPUs"), r.stderr[-3000:]
    assert not list(planned.glob("trials/*.parquet"))


def test_check_resources_asks_ray_only_for_gpus_or_a_cluster(monkeypatch):
    """``check_resources``: no Ray for a CPU-only local sweep; GPUs the runtime lacks refused in
    one line; a Ray this process runs already (a notebook's, which ``start_ray`` reuses)
    decides the CPU check by its nodes, not the usable cores."""
    import types

    from sweep import runtime
    from sweep.config import ConfigError, compose

    started = []
    fake = types.SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0},
                                 nodes=lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(runtime, "start_ray", lambda cfg: started.append(cfg) or fake)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    monkeypatch.setattr("workers.cores.usable_cores", lambda *a: 2)
    runtime.check_resources(compose(["resources.cpus_per_trial=2"]))
    assert started == []  # no Ray started to ask
    with pytest.raises(ConfigError) as e:
        runtime.check_resources(compose(["resources.gpus_per_trial=1"]))
    assert "resources.gpus_per_trial: 1, but the Ray cluster has 0 GPUs" in str(e.value)
    assert "\n" not in str(e.value) and len(started) == 1
    with pytest.raises(ConfigError, match="but this process may use 2 CPUs"):
        runtime.check_resources(compose(["resources.cpus_per_trial=3"]))
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}]
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True,
                                                                  nodes=lambda: nodes))
    runtime.check_resources(compose(["resources.cpus_per_trial=4"]))  # the running Ray has 4
    with pytest.raises(ConfigError) as e:
        runtime.check_resources(compose(["resources.cpus_per_trial=5"]))
    assert "the Ray this process runs already has 4 CPUs; allowed: at most 4" in str(e.value)
    assert "cluster.num_cpus" not in str(e.value)  # (it would not change a running Ray)


def test_the_statistics_processes_are_as_many_as_the_memory_holds():
    """``process_count``: one per usable CPU, but no more than MEMORY_SHARE of the usable memory
    holds at ``process_bytes`` each (the largest job's), at least one; computed by hand."""
    from analysis.stats import (MEMORY_SHARE, PROCESS_BYTES, PROCESS_TRIAL_BYTES,
                                PROCESS_TRIAL_MEASURE_BYTES, process_bytes, process_count)

    jobs = [(100_000, 41), (50_000, 41), (50_000, 41)]
    need = PROCESS_BYTES + 100_000 * (PROCESS_TRIAL_BYTES + 41 * PROCESS_TRIAL_MEASURE_BYTES)
    assert process_bytes(100_000, 41) == need
    assert process_count(jobs, cores=8, memory=64 * GIB) == 8  # the CPUs bound it
    assert process_count(jobs, cores=8, memory=int(3 * need / MEMORY_SHARE) + 1) == 3
    assert process_count(jobs, cores=8, memory=int(3 * need / MEMORY_SHARE) - 1) == 2
    assert process_count(jobs, cores=8, memory=0) == 1  # never none
    assert process_count(jobs, cores=1, memory=64 * GIB) == 1
    assert process_count([], cores=8, memory=64 * GIB) == 1


def test_a_report_in_a_small_memory_limit_runs_in_one_process(monkeypatch):
    """``statistics_table(processes=None)`` on a table big enough for processes, with the
    usable memory below what two of them need: it computes in this process (the progress
    callback says 1), the same table as with processes=1 (the usable memory read once)."""
    import numpy as np
    import pandas as pd

    from analysis.stats import FIXED_COST_TRIALS, PARALLEL_ABOVE, process_bytes, statistics_table
    from analysis.stats import table as table_module

    rng = np.random.default_rng(0)
    n = 1500
    df = pd.DataFrame({"width": rng.choice([8, 16, 32], n), "depth": rng.choice([2, 3], n),
                       "seed": rng.integers(1, 4, n)})
    df["gen_gap"] = rng.normal(size=n)
    df["m"] = df["gen_gap"] + rng.normal(size=n)
    n_boot = -(-PARALLEL_ABOVE // (n + FIXED_COST_TRIALS))
    reads = []
    monkeypatch.setattr(table_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(table_module, "usable_memory",
                        lambda: reads.append(1) or process_bytes(n, 1))
    import io

    from analysis.progress import StatsProgress

    seen = set()

    class Seen(StatsProgress):
        def __call__(self, done, total, processes):
            seen.add(processes)
            super().__call__(done, total, processes)

    said = io.StringIO()
    small = statistics_table(df, ["m"], by=None, n_boot=n_boot, processes=None,
                             hyperparameters=["width", "depth"],
                             progress=Seen(stream=said, live=False))
    assert seen == {1} and reads == [1]
    need = process_bytes(n, 1) / 2**30
    assert (f"follow on 1 process (not 2: 0.8 of the usable memory, {need:.1f} GiB, holds 1 "
            f"of about {need:.1f} GiB each)") in said.getvalue(), said.getvalue()
    one = statistics_table(df, ["m"], by=None, n_boot=n_boot, processes=1,
                           hyperparameters=["width", "depth"])
    pd.testing.assert_frame_equal(small, one)


def test_a_cluster_of_fixed_nodes_refuses_trials_larger_than_every_node(monkeypatch):
    """On a cluster (``cluster.address``) nodes may join later (an autoscaler), so trials larger
    than every node now are not refused; with ``cluster.fixed_nodes=true`` (what each
    `sweep slurm` job passes: its nodes have all joined when the driver starts) they are, in
    one line, where they would wait forever."""
    import types

    from sweep import dispatch, runtime
    from sweep.config import ConfigError, compose

    class Reached(Exception):
        pass

    def remote(fn):
        raise Reached  # (past the checks)

    fake = types.SimpleNamespace(
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}],
        cluster_resources=lambda: {"CPU": 16.0}, remote=remote)
    monkeypatch.setattr(runtime, "start_ray", lambda cfg: fake)
    big = ["cluster.address=127.0.0.1:6379", "resources.cpus_per_trial=12"]
    with pytest.raises(Reached):
        dispatch.Tasks(compose(big), print, None, print)
    with pytest.raises(ConfigError) as e:
        dispatch.Tasks(compose(big + ["cluster.fixed_nodes=true"]), print, None, print)
    assert "resources.cpus_per_trial: 12, but the largest node of the Ray cluster has 8 CPUs" \
        in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Reached):
        dispatch.Tasks(compose(big[:1] + ["resources.cpus_per_trial=8",
                                          "cluster.fixed_nodes=true"]), print, None, print)
