"""Trials that no node can run: refused in one line where no node can join, waited for (with a
note) where an autoscaler adds nodes (``cluster.fixed_nodes``, ``sweep.runtime.check_trials_fit``).

The shape that matters is docker/cluster.yaml's and docker/rayjob.yaml's: a head without CPUs
and GPU workers that an autoscaler starts from zero, so the cluster has no GPU when the driver
starts."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from sweep.config import ConfigError, compose
from sweep.runtime import check_trials_fit, node_groups

ROOT = Path(__file__).resolve().parents[1]


def stub(nodes, groups=None):
    """A stand-in for the ``ray`` module: live ``nodes`` (resource dicts), and node groups an
    autoscaler reported (resource dicts, max_count 4; None: none reported)."""
    config = None
    if groups is not None:
        config = types.SimpleNamespace(node_group_configs=[
            types.SimpleNamespace(resources=g, max_count=4) for g in groups])
    total = {}
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0) + v
    state = types.SimpleNamespace(get_cluster_config=lambda: config)
    return types.SimpleNamespace(
        nodes=lambda: [{"Alive": True, "Resources": n} for n in nodes]
        + [{"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}],  # dead: never counts
        cluster_resources=lambda: total,
        _private=types.SimpleNamespace(state=types.SimpleNamespace(state=state)))


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_where_no_node_joins_a_trial_larger_than_every_node_is_refused():
    ray = stub([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    assert check_trials_fit(ray, 8, 1, True) is None
    with pytest.raises(ConfigError) as e:
        check_trials_fit(ray, 12, 0, True)
    assert one_line(e) == ("resources.cpus_per_trial: 12, but the largest node of the Ray "
                           "cluster has 8 CPUs (a trial runs on one node); allowed: "
                           "resources.cpus_per_trial at most 8")  # (no local Ray's hint)
    with pytest.raises(ConfigError) as e:  # 2 GPUs in all, but 1 per node
        check_trials_fit(ray, 1, 2, True)
    assert one_line(e) == ("resources.cpus_per_trial: 1, resources.gpus_per_trial: 2, but the "
                           "largest node of the Ray cluster has 1 GPUs (a trial runs on one "
                           "node); allowed: resources.gpus_per_trial at most 1")
    with pytest.raises(ConfigError) as e:
        check_trials_fit(stub([{"CPU": 8.0}]), 1, 1, True)
    assert "but the Ray cluster has 0 GPUs (a trial runs on one node); allowed: 0 here (CPU), " \
        "or a cluster with GPUs" in one_line(e)
    # fixed nodes: what an autoscaler reported does not matter (none runs)
    with pytest.raises(ConfigError):
        check_trials_fit(stub([{"CPU": 8.0}], groups=[{"CPU": 8.0, "GPU": 4.0}]), 1, 1, True)


def test_a_trial_needs_its_cpus_and_gpus_on_one_node():
    """Nodes of 32 CPUs and of 4 CPUs with a GPU hold no trial of 8 CPUs and 1 GPU, though
    each resource alone is there: refused where the nodes are all there, and against node
    groups that hold each but not both; waited for only where a node that holds both may
    come."""
    nodes = [{"CPU": 32.0}, {"CPU": 4.0, "GPU": 1.0}]
    with pytest.raises(ConfigError) as e:
        check_trials_fit(stub(nodes), 8, 1, True)
    assert one_line(e) == ("resources.cpus_per_trial: 8, resources.gpus_per_trial: 1, but "
                           "those with 1 GPUs have at most 4 CPUs (a trial runs on one node); "
                           "allowed: resources.cpus_per_trial at most 4 with these GPUs")
    assert check_trials_fit(stub(nodes), 4, 1, True) is None
    groups = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 32.0}]
    with pytest.raises(ConfigError) as e:
        check_trials_fit(stub([{"CPU": 0.0}], groups=groups), 16, 1, None)
    assert "those with 1 GPUs have at most 8 CPUs" in one_line(e)
    assert check_trials_fit(stub([{"CPU": 0.0}], groups=groups), 8, 1, None).endswith(
        "its autoscaler starts one (a node group holds it)")
    assert check_trials_fit(stub(nodes), 8, 1, False).startswith(
        "note: no node of the Ray cluster holds a trial of 8 CPUs and 1 GPUs now")


def test_not_said_refuses_only_gpus_the_whole_cluster_lacks():
    head_only = stub([{"CPU": 0.0}, {"CPU": 4.0}])  # no GPU node has started yet
    with pytest.raises(ConfigError) as e:
        check_trials_fit(head_only, 1, 0.25, None)
    assert one_line(e) == ("resources.gpus_per_trial: 0.25, but the Ray cluster has 0 GPUs in "
                           "all; allowed: 0 (CPU), a cluster with GPUs, or "
                           "cluster.fixed_nodes=false where an autoscaler adds GPU nodes")
    with pytest.raises(ConfigError) as e:
        check_trials_fit(stub([{"CPU": 4.0, "GPU": 1.0}]), 1, 2, None)
    assert "has 1 GPUs in all; allowed: 0 (CPU), at most 1, or cluster.fixed_nodes=false" \
        in one_line(e)
    # CPUs beyond every node, or GPUs in all but not on one node: a note, the trials wait
    note = check_trials_fit(stub([{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]), 6, 2,
                            None)
    assert note == ("note: no node of the Ray cluster holds a trial of 6 CPUs and 2 GPUs now (a "
                    "trial runs on one node): trials wait until one joins (an autoscaler's); "
                    "cluster.fixed_nodes=true refuses them instead")
    assert check_trials_fit(head_only, 4, 0, None) is None


def test_under_an_autoscaler_nothing_is_refused_and_what_waits_is_said():
    head_only = stub([{"CPU": 0.0}])
    note = check_trials_fit(head_only, 1, 0.25, False)
    assert note.startswith("note: no node of the Ray cluster holds a trial of 1 CPUs and 0.25 "
                           "GPUs now")
    assert check_trials_fit(stub([{"CPU": 2.0, "GPU": 1.0}]), 1, 0.25, False) is None


def test_node_groups_an_autoscaler_reported_decide_where_they_exist():
    groups = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 32.0}]
    ray = stub([{"CPU": 0.0}], groups=groups)
    for fixed in (None, False):
        note = check_trials_fit(ray, 8, 1, fixed)
        assert note.endswith("trials wait until its autoscaler starts one (a node group holds "
                             "it)"), note
        with pytest.raises(ConfigError) as e:
            check_trials_fit(ray, 1, 2, fixed)
        assert one_line(e) == (
            "resources.cpus_per_trial: 1, resources.gpus_per_trial: 2, but the largest node of "
            "the Ray cluster or node group of its autoscaler has 1 GPUs (a trial runs on one "
            "node); allowed: resources.gpus_per_trial at most 1")
        with pytest.raises(ConfigError) as e:
            check_trials_fit(ray, 48, 0, fixed)
        assert "cpus_per_trial: 48" in one_line(e) and "has 32 CPUs" in one_line(e)
    # a group the autoscaler may not start (max_count 0), or whose resources it does not
    # give, does not count; none left: as if none were reported
    ray.cluster_resources = lambda: {}
    config = types.SimpleNamespace(node_group_configs=[
        types.SimpleNamespace(resources={"CPU": 8.0, "GPU": 4.0}, max_count=0),
        types.SimpleNamespace(resources={}, max_count=4)])
    ray._private.state.state.get_cluster_config = lambda: config
    assert node_groups(ray) is None
    with pytest.raises(ConfigError, match="has 0 GPUs in all"):
        check_trials_fit(ray, 1, 1, None)


def test_a_stand_in_or_a_ray_without_the_report_reads_as_none():
    assert node_groups(types.SimpleNamespace()) is None


def test_tasks_say_what_waits_and_refuse_what_cannot_run(monkeypatch):
    """``dispatch.Tasks`` logs check_trials_fit's note (one line) and goes on; it refuses
    before anything runs where no node can ever hold a trial."""
    from sweep import dispatch, runtime

    class Reached(Exception):
        pass

    def remote(fn):
        raise Reached  # (past the checks)

    ray = stub([{"CPU": 0.0}])
    ray.remote = remote
    monkeypatch.setattr(runtime, "start_ray", lambda cfg: ray)
    said = []
    over = ["cluster.address=127.0.0.1:6379", "resources.gpus_per_trial=0.25"]
    with pytest.raises(Reached):
        dispatch.Tasks(compose(over + ["cluster.fixed_nodes=false"]), print, None, said.append)
    assert said == ["note: no node of the Ray cluster holds a trial of 1 CPUs and 0.25 GPUs now "
                    "(a trial runs on one node): trials wait until one joins (an autoscaler's); "
                    "cluster.fixed_nodes=true refuses them instead; at most 60.0 min in a row, "
                    "then the driver stops (cluster.node_wait)"]
    for fixed in ([], ["cluster.fixed_nodes=true"]):
        with pytest.raises(ConfigError, match="has 0 GPUs"):
            dispatch.Tasks(compose(over + fixed), print, None, said.append)
    assert len(said) == 1


def test_a_sweep_stored_with_fixed_nodes_false_reads_as_an_autoscaler():
    """sweep.json of sweeps launched while the key was a plain boolean holds
    ``fixed_nodes: false`` (its default then, meaning "not said"): it now reads as "an
    autoscaler adds nodes" (GPU trials wait rather than being refused), one without the key
    as null; ``sweep resume DIR cluster.fixed_nodes=...`` sets either (docker/README.md)."""
    from dataclasses import asdict

    from sweep.config import from_dict

    d = json.loads(json.dumps(asdict(compose([]))))  # as sweep.json holds it
    assert d["cluster"]["fixed_nodes"] is None
    d["cluster"]["fixed_nodes"] = False
    assert from_dict(d).cluster.fixed_nodes is False
    del d["cluster"]["fixed_nodes"]
    assert from_dict(d).cluster.fixed_nodes is None


def test_fixed_nodes_reads_true_false_and_null():
    assert compose([]).cluster.fixed_nodes is None
    assert compose(["cluster.fixed_nodes=true"]).cluster.fixed_nodes is True
    assert compose(["cluster.fixed_nodes=false"]).cluster.fixed_nodes is False
    with pytest.raises(ConfigError, match="cluster.fixed_nodes: expected true, false or null"):
        compose(["cluster.fixed_nodes=sometimes"])


def test_node_wait_is_a_duration_and_a_stored_sweep_without_it_gets_the_default():
    assert compose([]).cluster.node_wait == "1h"
    assert compose(["cluster.node_wait=null"]).cluster.node_wait is None
    assert compose(["cluster.node_wait=90"]).cluster.node_wait == 90
    with pytest.raises(ConfigError, match=r"cluster.node_wait: 'soon'; allowed: seconds"):
        compose(["cluster.node_wait=soon"])
    from sweep.config import composed, from_dict

    d = composed([])
    del d["cluster"]["node_wait"]  # (a sweep.json written before the key existed)
    assert from_dict(d).cluster.node_wait == "1h"


CLUSTER = textwrap.dedent("""
    import sys
    from ray.cluster_utils import Cluster

    # docker/cluster.yaml's shape: a head without CPUs, a CPU worker, no GPU yet
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    print("ADDRESS " + cluster.address, flush=True)
    for line in sys.stdin:  # "gpu": the autoscaler adds a GPU node; "stop"
        if line.strip() == "gpu":
            cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
            cluster.wait_for_nodes()
            print("JOINED", flush=True)
        else:
            break
    cluster.shutdown()
""")

DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    from sweep.cli import main
    from sweep.config import ConfigError, compose
    from sweep.driver import launch, plan_only

    out, address, tiny = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    ray.init(address=address, log_to_driver=False)
    gpu = [f"cluster.address={address}", "resources.gpus_per_trial=1"]

    def refused(extra, name):
        try:
            launch(compose(tiny + gpu + extra + [f"out={out / name}"]))
        except ConfigError as e:
            print("REFUSED " + str(e), flush=True)
            print("WROTE " + str((out / name).exists()), flush=True)
        else:
            print("RAN", flush=True)

    refused([], "default")  # not said: the cluster has no GPU at all
    # a plan is written (it may be for later), with a note that a resume would refuse it now
    plan_only(compose(tiny + gpu + [f"out={out / 'planned'}"]))
    # node groups as an autoscaler reports them to the GCS (Ray 2.60's own do not; the key
    # is Ray's, read by Ray Data too): GPU nodes of 1
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.max_count = "gpu", 4
    group.resources["CPU"], group.resources["GPU"] = 1, 1
    ns = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()
    _internal_kv_put(key, config.SerializeToString(), namespace=ns)
    refused(["resources.gpus_per_trial=2", "cluster.fixed_nodes=false"], "two")
    _internal_kv_del(key, namespace=ns)
    # the plan resumed with cluster.fixed_nodes=false: it waits; the test sends SIGINT once
    # the dispatch loop's handlers are in place (said on stderr)
    import sweep.dispatch as dispatch
    relay = dispatch._relay_signals

    def said_relay(*a, **k):
        undo = relay(*a, **k)
        print("HANDLERS", file=sys.stderr, flush=True)
        return undo

    dispatch._relay_signals = said_relay
    t0 = time.monotonic()
    rc = main(["resume", str(out / "planned"), f"cluster.address={address}",
               "cluster.fixed_nodes=false"])
    print(f"RESUMED {rc} {time.monotonic() - t0:.1f}", flush=True)
    # cluster.fixed_nodes=false: the trials wait until the test adds a GPU node
    launch(compose(tiny + gpu + ["cluster.fixed_nodes=false", "dry_run=true",
                                 f"out={out / 'waits'}"]))
    print("DONE", flush=True)
    ray.shutdown()
""")


@pytest.mark.slow
def test_gpu_trials_wait_for_an_autoscalers_node_and_are_refused_where_none_can_come(tmp_path):
    """On a real loopback cluster (a head without CPUs, one CPU worker): GPU trials are refused
    by default (no GPU anywhere, one line naming cluster.fixed_nodes=false, nothing written);
    with node groups reported to the GCS, 2 GPUs per trial are refused against GPU nodes of 1
    even with cluster.fixed_nodes=false; with cluster.fixed_nodes=false and no report, the
    launch notes that the trials wait, runs none, and runs them all once a GPU node joins."""
    import threading
    import time

    from analysis import load_results

    tiny = ["experiment=demo", "trials=3", "progress=false", "figure=false"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], env=env, cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    driver = None
    try:
        line = cluster.stdout.readline()
        assert line.startswith("ADDRESS "), line
        address = line.split()[1]
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), address, *tiny],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        err = []
        reader = threading.Thread(target=lambda: err.extend(driver.stderr), daemon=True)
        reader.start()
        def waiting(n):  # the n-th "trials wait" note
            deadline = time.monotonic() + 300
            while sum("trials wait until one joins" in e for e in err) < n:
                assert time.monotonic() < deadline and driver.poll() is None, \
                    "".join(err)[-3000:]
                time.sleep(0.2)

        waiting(1)  # the resume
        deadline = time.monotonic() + 120
        while not any(e.startswith("HANDLERS") for e in err):
            assert time.monotonic() < deadline and driver.poll() is None, "".join(err)[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)
        driver.send_signal(signal.SIGINT)  # nothing runs: it stops at once, not after 30 s
        waiting(2)  # the launch
        time.sleep(2)  # (waiting, not running)
        before = list((tmp_path / "waits" / "trials").glob("*.parquet"))
        cluster.stdin.write("gpu\n")
        cluster.stdin.flush()
        assert cluster.stdout.readline().strip() == "JOINED"
        out, _ = driver.communicate(timeout=300)
        reader.join(timeout=10)
    finally:
        for proc in (driver, cluster):
            if proc is not None and proc.poll() is None:
                if proc is cluster:
                    try:
                        proc.stdin.write("stop\n")
                        proc.stdin.flush()
                        proc.wait(timeout=60)
                        continue
                    except (OSError, subprocess.TimeoutExpired):
                        pass
                proc.kill()
                proc.wait()
    assert driver.returncode == 0, "".join(err)[-3000:]
    said = [ln for ln in out.splitlines() if ln.startswith(("REFUSED", "WROTE", "RAN", "DONE",
                                                             "RESUMED", "stopped;"))]
    assert said[0] == ("REFUSED resources.gpus_per_trial: 1, but the Ray cluster has 0 GPUs in "
                       "all; allowed: 0 (CPU), a cluster with GPUs, or cluster.fixed_nodes=false "
                       "where an autoscaler adds GPU nodes"), said
    assert said[1] == "WROTE False", said
    assert said[2] == ("REFUSED resources.cpus_per_trial: 1, resources.gpus_per_trial: 2, but "
                       "the largest node of the Ray cluster or node group of its autoscaler has "
                       "1 GPUs (a trial runs on one node); allowed: resources.gpus_per_trial at "
                       "most 1"), said
    assert said[3] == "WROTE False", said
    # the resume: stopped at once, and the command to run the rest keeps its overrides
    assert said[4] == (f"stopped; run the rest with: sweep resume {tmp_path / 'planned'} "
                       f"cluster.address={address} cluster.fixed_nodes=false"), said
    rc, seconds = said[5].split()[1:]
    assert rc == "130" and float(seconds) < 25, said
    assert said[6] == "DONE", said
    text = "".join(err)
    assert (f"note: a resume on the cluster at {address} would refuse it as it is now: "
            "resources.gpus_per_trial: 1, but the Ray cluster has 0 GPUs in all") in text
    assert "SIGINT: no new trials; none is running (no node can run one yet)" in text
    assert "run them with: sweep resume" in text and not list(
        (tmp_path / "planned" / "trials").glob("*.parquet"))
    assert before == []
    assert any(e.startswith("note: no node of the Ray cluster holds a trial of 1 CPUs and 1 GPUs "
                            "now (a trial runs on one node): trials wait until one joins (an "
                            "autoscaler's)") for e in err), err
    df = load_results(tmp_path / "waits")
    assert len(df) == 3 and (df["status"] == "ok").all(), df[["status", "error"]]
    assert json.loads((tmp_path / "waits" / "sweep.json").read_text())["config"]["cluster"][
        "fixed_nodes"] is False


def test_the_trials_a_cluster_runs_at_once_are_counted_per_node():
    """``Tasks.capacity``: per live node, its CPUs over cpus_per_trial and its GPUs over
    gpus_per_trial (fractions as Ray counts them), the smaller, rounded down; summed; 0 for a
    head without CPUs and no worker yet (the watch's fallback clock then times no task)."""
    from sweep.dispatch import Tasks

    def capacity(nodes, *overrides):
        t = Tasks.__new__(Tasks)
        t.cfg = compose(list(overrides))
        t.ray = stub(nodes)
        return t.capacity()

    g5 = {"CPU": 8.0, "GPU": 1.0}
    assert capacity([{"CPU": 0.0}]) == 0
    assert capacity([{"CPU": 0.0}, g5, g5], "resources.gpus_per_trial=0.25") == 8
    assert capacity([{"CPU": 0.0}, g5, g5], "resources.gpus_per_trial=0.1") == 16  # 8 CPUs
    assert capacity([{"CPU": 0.0}, g5], "resources.gpus_per_trial=0.1",
                    "resources.cpus_per_trial=0.5") == 10  # 10 of 0.1 in one GPU
    assert capacity([{"CPU": 3.0}, {"CPU": 3.0}], "resources.cpus_per_trial=2") == 2  # not 3
    assert capacity([{"CPU": 4.0}, {"CPU": 2.0}]) == 6  # (the dead node of 64 not counted)


def test_the_tasks_in_flight_follow_the_nodes_that_join(ray_local, tmp_path, monkeypatch):
    """``dispatch.run`` with ``capacity``: the default bound (2 per trial the nodes can run)
    follows it as it grows, on a real Ray; before, a cluster whose workers start at zero kept
    2 tasks in flight however many nodes an autoscaler added."""
    import threading
    import time

    from sweep import dispatch
    from sweep.watch import Watch

    @ray_local.remote(num_cpus=0)
    def nap(unit):
        time.sleep(0.3)
        return list(unit)

    class Naps(dispatch.Work):
        def __init__(self, n):
            self.counts, self.total = {"ok": 0}, n
            self.lock = threading.Lock()
            self.open, self.peaks, self.formed = 0, [], []

        def units(self, slots):
            for i in range(self.total):
                self.formed.append(slots())  # (the count each unit was formed for)
                yield [i]

        def submit(self, unit, token, stop):
            with self.lock:
                self.open += 1
                self.peaks.append((grown["now"], self.open))
            return nap.remote(unit)

        def trial_ids(self, unit):
            return [str(u) for u in unit]

        def done(self, unit, results):
            with self.lock:
                self.open -= 1
            self.counts["ok"] += len(results)
            return len(results)

    grown = {"now": 1}
    said = []
    monkeypatch.setattr(dispatch, "CAPACITY_POLL_S", 0.2)
    monkeypatch.setattr(dispatch, "log", said.append)
    work = Naps(60)
    threading.Timer(1.0, lambda: grown.update(now=3)).start()  # "two nodes joined"
    counts = dispatch.run(work, ray_local, tmp_path, compose([]).resources, 1,
                          Watch(tmp_path, None), capacity=lambda: grown["now"])
    assert counts == {"ok": 60}
    assert max(o for g, o in work.peaks if g == 1) == 2
    assert max(o for g, o in work.peaks if g == 3) == 6
    assert work.formed[0] == 1 and work.formed[-1] == 3  # units formed for the nodes now
    assert "note: the cluster's nodes now run 3 trial(s) at once (were 1); up to 6 tasks in " \
           "flight" in said
    # a bound the user set stays
    grown["now"] = 1
    work = Naps(30)
    threading.Timer(1.0, lambda: grown.update(now=3)).start()
    dispatch.run(work, ray_local, tmp_path, compose(["resources.max_in_flight=2"]).resources, 1,
                 Watch(tmp_path, None), capacity=lambda: grown["now"])
    assert max(o for _, o in work.peaks) == 2


def test_a_signal_counts_the_nodes_again_before_it_says_none_is_running(ray_local, tmp_path,
                                                                        monkeypatch):
    """The last count said no node could run a trial (a cluster from zero), but nodes joined
    since and tasks run: a Ctrl-C counts again, says they run and lets them finish within the
    grace, rather than cancelling them as if none ran (a reviewer's case)."""
    import signal
    import threading
    import time

    from sweep import dispatch
    from sweep.watch import Watch

    @ray_local.remote(num_cpus=1)
    def nap(unit):
        time.sleep(3)
        return list(unit)

    class Naps(dispatch.Work):
        def __init__(self):
            self.counts, self.total = {"ok": 0}, 2

        def units(self, slots):
            return ([i] for i in range(2))

        def submit(self, unit, token, stop):
            return nap.remote(unit)

        def trial_ids(self, unit):
            return [str(u) for u in unit]

        def done(self, unit, results):
            self.counts["ok"] += len(results)
            return len(results)

    said = []
    monkeypatch.setattr(dispatch, "log", said.append)
    monkeypatch.setattr(dispatch, "CAPACITY_POLL_S", 3600.0)  # (only the signal asks again)
    nodes = {"run": 0}  # none at the start (the loop's first count); two when the signal comes

    def joined_and_signal():
        nodes["run"] = 2
        os.kill(os.getpid(), signal.SIGINT)

    threading.Timer(1.5, joined_and_signal).start()
    counts = dispatch.run(Naps(), ray_local, tmp_path, compose([]).resources, 1,
                          Watch(tmp_path, None, slots=0), capacity=lambda: nodes["run"])
    assert counts == {"ok": 2}, said
    assert "\nSIGINT: no new trials; waiting up to 30 s for the 2 running task(s) (Ctrl-C " \
           "again cancels them)" in said, said


@pytest.mark.parametrize("in_slurm_job", [False, True])
def test_the_command_to_run_the_rest_repeats_a_resumes_overrides(tmp_path, capsys, monkeypatch,
                                                                  in_slurm_job):
    """After a stop, `sweep resume DIR OVERRIDES` says `sweep resume DIR OVERRIDES` (they are
    not stored with the sweep), except, in a `sweep slurm` job, the job's own cluster.* (its
    allocation's head is gone when it ends)."""
    from sweep import driver
    from sweep.cli import main

    out = tmp_path / "s"
    assert main(["plan", "trials=2", f"out={out}", "progress=false", "figure=false"]) == 0
    capsys.readouterr()

    def stopped(cfg, **kw):
        raise driver.DispatchStopped("stopped by SIGINT", 130, {})

    monkeypatch.setattr(driver, "launch", stopped)
    if in_slurm_job:
        monkeypatch.setenv("SWEEP_SLURM_JOB", "17")
    else:
        monkeypatch.delenv("SWEEP_SLURM_JOB", raising=False)
    over = ["cluster.address=10.0.0.1:6379", "cluster.fixed_nodes=false",
            "resources.max_in_flight=8"]
    assert main(["resume", str(out), *over]) == 130
    said = capsys.readouterr().out.strip().splitlines()[-1]
    kept = over[2:] if in_slurm_job else over
    assert said == f"stopped; run the rest with: sweep resume {out} " + " ".join(kept)


@pytest.mark.slow
def test_trials_no_node_can_run_stop_the_driver_after_node_wait(tmp_path):
    """On a real loopback cluster (a head without CPUs, one CPU worker, no GPU) with
    cluster.fixed_nodes=false (an autoscaler would add nodes) and cluster.node_wait=3: GPU
    trials wait for a node that never comes; after 3 s the driver cancels them and stops in
    one run of lines, exit 5, with the resume command, and records nothing (before, it waited
    for good)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], env=env, cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = cluster.stdout.readline()
        assert line.startswith("ADDRESS "), line
        address = line.split()[1]
        out = tmp_path / "waits"
        r = subprocess.run(
            [sys.executable, "-m", "sweep.cli", "launch", "experiment=demo", "trials=3",
             "progress=false", "figure=false", "dry_run=true", f"cluster.address={address}",
             "resources.gpus_per_trial=1", "cluster.fixed_nodes=false", "cluster.node_wait=3",
             f"out={out}"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        try:
            cluster.stdin.write("stop\n")
            cluster.stdin.flush()
            cluster.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            cluster.kill()
            cluster.wait()
    assert r.returncode == 5, (r.returncode, r.stderr[-3000:])
    assert ("no node of the Ray cluster could run a trial for 3 s (cluster.node_wait): stopped "
            "dispatching") in r.stderr, r.stderr[-3000:]
    assert f"3 of 3 left. Run them with: sweep resume {out}" in r.stderr, r.stderr[-3000:]
    assert ("trials wait until one joins (an autoscaler's); cluster.fixed_nodes=true refuses "
            "them instead; at most 3 s in a row, then the driver stops (cluster.node_wait)"
            ) in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not list((out / "trials").glob("*.parquet"))
