"""The Ray runtime a driver runs on: a local Ray on loopback only (with a reaper that stops it
if the driver dies) or the cluster at ``cluster.address``, what it offers (GPUs, the largest
node's memory), and whether it is still there (``runtime_lost``)."""

from __future__ import annotations

import contextlib
import os
import sys

from sweep.config import ConfigError, SweepConfig

RUNTIME_PROBE_S = 5.0  # how long the Ray runtime may take to answer before it counts as gone


def largest_node_memory(ray, cpus: float = 1.0, gpus: float = 0.0) -> int:
    """The largest ``memory`` resource (bytes) of the live nodes that can run a trial (at
    least ``cpus`` CPUs and ``gpus`` GPUs: not a head node without workers, nor a CPU node for
    GPU trials); 0 if none says."""
    return int(max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes()
                    if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= cpus
                    and n.get("Resources", {}).get("GPU", 0) >= gpus), default=0))


def _local_ray_roots(ray) -> list[tuple[str, object]]:
    """(name, Popen) of the raylet and GCS of a local Ray this driver started (Ray's node
    object; private API, in one place); empty when connected to an existing cluster."""
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    if node is None or not getattr(node, "head", False):
        return []
    return [(name, i.process) for name, infos in getattr(node, "all_processes", {}).items()
            if name in ("raylet", "gcs_server") for i in infos if i.process is not None]


def _start_reaper(ray) -> None:
    """A watcher in its own session that stops this driver's local Ray (its raylet, GCS and all
    they started, by PID) if the driver dies without shutting it down (SIGKILL): see
    sweep.reaper."""
    import subprocess

    roots = [p.pid for _, p in _local_ray_roots(ray)]
    if roots:
        subprocess.Popen([sys.executable, "-m", "sweep.reaper", str(os.getpid()), *map(str, roots)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)


class _TokenNotice:
    """Drops Ray's notice that it enabled token authentication for a new local cluster (its
    default, printed on every start; README "Network exposure" says what it means); every
    other record passes."""

    @staticmethod
    def filter(record) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


def _quiet_token_notice() -> None:
    import logging

    log_ = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenNotice) for f in log_.filters):
        log_.addFilter(_TokenNotice())


LOOPBACK = "127.0.0.1"
_RAY_CLUSTER_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_node():
    """While a local Ray starts inside this block (``ray.init(address="local",
    _node_ip_address="127.0.0.1")``): make 127.0.0.1 its node address, which is where Ray 2.60
    binds every server of the node (GCS, raylet, the workers' and the driver's gRPC servers,
    runtime-env and dashboard agents, metrics): on a loopback node address it binds to loopback,
    on any other to all interfaces (``::``/``0.0.0.0``) or that address.

    Ray turns a requested loopback node address into the machine's network address unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is 0, and reads that variable once, when ``ray`` is
    first imported: setting it later has no effect. So this sets both the variable (for the
    processes Ray starts) and Ray's constant read from it (``ray._private.ray_constants``,
    private: kept in this one place; ``check_loopback`` catches a Ray where it no longer
    works), and restores both on exit (a later join of a cluster keeps Ray's own default)."""
    from ray._private import ray_constants

    env, const = os.environ.get(_RAY_CLUSTER_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const
        if env is None:
            os.environ.pop(_RAY_CLUSTER_VAR, None)
        else:
            os.environ[_RAY_CLUSTER_VAR] = env


def check_loopback(ray) -> None:
    """Raises RuntimeError (after shutting the local Ray down) unless the local Ray this driver
    just started has a loopback node address (then all its servers listen on loopback only,
    see ``loopback_node``); the message names the address it got."""
    import ipaddress

    got = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(got).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"the local Ray started on {got}, not {LOOPBACK}, so its servers would "
                           f"listen on the network (Ray {ray.__version__}; README \"Network "
                           "exposure\"): stopped it")


# A node that stops answering without dying (a frozen VM, a network partition, SIGSTOP) keeps
# its TCP connections open, so the driver's call running a task there fails only when a gRPC
# keepalive ping on that connection goes unanswered: with Ray's defaults (a ping after 300 s
# without traffic, 120 s for its answer) the task's NodeDiedError, and so its retry elsewhere
# (sweep.dispatch), came 7 minutes after the node froze, long after Ray had declared the node
# dead. The driver pings after DRIVER_KEEPALIVE_S instead, so a stalled node's tasks run again
# within 2 minutes. Not lower: Ray's gRPC servers refuse pings that come more often than
# min(60 s, their own keepalive time) (ray src/ray/rpc/grpc_server.cc) and close such a
# connection, which would fail a healthy long task.
DRIVER_KEEPALIVE_S = 90
DRIVER_KEEPALIVE_TIMEOUT_S = 30
_KEEPALIVE_VARS = {"RAY_grpc_client_keepalive_time_ms": DRIVER_KEEPALIVE_S * 1000,
                   "RAY_grpc_client_keepalive_timeout_ms": DRIVER_KEEPALIVE_TIMEOUT_S * 1000}


@contextlib.contextmanager
def driver_keepalive():
    """While the driver connects to a cluster inside this block: the keepalive of its gRPC
    connections (DRIVER_KEEPALIVE_S, DRIVER_KEEPALIVE_TIMEOUT_S) through Ray's
    ``RAY_grpc_client_keepalive_time_ms`` / ``RAY_grpc_client_keepalive_timeout_ms``, which its
    core worker reads when ``ray.init`` starts it. Not for a local Ray, whose own processes
    would inherit them with nothing to gain on one node. A variable the user set is kept, and
    a cluster's ``_system_config`` / ``ray start --system-config`` wins over both (Ray's
    order); the environment is restored on exit."""
    saved = {k: os.environ.get(k) for k in _KEEPALIVE_VARS}
    for k, v in _KEEPALIVE_VARS.items():
        os.environ.setdefault(k, str(v))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_ray(cfg: SweepConfig):
    """A local Ray on 127.0.0.1 without dashboard, all of whose servers listen on loopback only
    (``loopback_node``; RuntimeError if Ray does not comply), or the cluster at
    cluster.address."""
    import logging

    import ray

    if ray.is_initialized():
        return ray
    common = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    if cfg.cluster.address is None:
        _quiet_token_notice()
        from workers.cores import usable_cores

        # (cluster.num_cpus null: the CPUs this process may use, not Ray's count of the node's
        # cores, which ignores a SLURM allocation's or taskset's affinity mask)
        num_cpus = cfg.cluster.num_cpus if cfg.cluster.num_cpus is not None else usable_cores()
        with loopback_node():  # (one node: no stall to detect; Ray's keepalive defaults)
            ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **common)
        check_loopback(ray)
        _start_reaper(ray)
    else:  # checked first: one line (ClusterUnreachable, a ConfigError) if it cannot be used
        from sweep.connect import connect

        common.pop("include_dashboard")
        with driver_keepalive():
            connect(ray, cfg.cluster.address, **common)
    return ray


def _largest_node(ray, resource: str) -> float:
    """The largest amount of ``resource`` ("CPU", "GPU") on one live node of the Ray runtime."""
    return max((n.get("Resources", {}).get(resource, 0) for n in ray.nodes() if n.get("Alive")),
               default=0)


def node_groups(ray) -> list[dict] | None:
    """The resources of each node group an autoscaler may start (``max_count`` not 0, its
    resources given), as an autoscaler reported them to the GCS (Ray's ``ClusterConfig``, read
    as Ray Data reads it: ``ray._private.state.state.get_cluster_config()``; private API, in
    one place); None where none was reported (Ray 2.60's own autoscalers report none; the
    GCS keeps what a newer one reports) or it cannot be read."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # (a Ray without it, a stand-in, a runtime that cannot answer)
        return None
    if config is None:
        return None
    groups = [dict(g.resources) for g in config.node_group_configs
              if g.max_count != 0 and g.resources]
    return groups or None


def _holds(resources: dict, cpus: float, gpus: float) -> bool:
    """Whether one node (or node group) of ``resources`` holds a trial of ``cpus`` CPUs and
    ``gpus`` GPUs."""
    return resources.get("CPU", 0) >= cpus and (gpus <= 0 or resources.get("GPU", 0) >= gpus)


def _short(nodes: list[dict], cpus: float, gpus: float, where: str) -> tuple[str, str, str]:
    """(what is short: "CPU", "GPU" or "both", why none of ``nodes`` holds the trial, the
    largest trial they hold) for a refusal: ``where`` ("the largest node of the Ray runtime")
    has too few CPUs, or too few GPUs, or no node has both (each alone on some node)."""
    top_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    top_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    if top_cpu < cpus:
        return ("CPU", f"{where} has {top_cpu:g} CPUs",
                f"resources.cpus_per_trial at most {top_cpu:g}")
    if gpus > 0 and top_gpu < gpus:
        return ("GPU", f"{where} has {top_gpu:g} GPUs",
                f"resources.gpus_per_trial at most {top_gpu:g}")
    with_gpus = max(n.get("CPU", 0) for n in nodes if n.get("GPU", 0) >= gpus)
    return ("both", f"those with {gpus:g} GPUs have at most {with_gpus:g} CPUs",
            f"resources.cpus_per_trial at most {with_gpus:g} with these GPUs")


def check_trials_fit(ray, cpus: float, gpus: float, fixed_nodes: bool | None,
                     local: bool = False) -> str | None:
    """Whether a trial asking ``cpus`` CPUs and ``gpus`` GPUs can ever be placed (a task runs
    on one node, which must have both; one that never can would wait forever): a one-line
    ConfigError where it cannot, else a note to log where trials wait for a node to join,
    else None.

    ``fixed_nodes`` True, where no node joins (``local``: a local Ray; ``cluster.fixed_nodes
    =true``, each `sweep slurm` job's): against the live nodes. Otherwise, where an autoscaler
    reported its node groups (``node_groups``): against the live nodes and the node groups.
    Without that report, False (``cluster.fixed_nodes=false``: an autoscaler adds nodes)
    refuses nothing; None (not said: the default) refuses GPU trials where the whole cluster
    has fewer GPUs than one trial asks (GPUs asked of a CPU cluster), naming
    ``cluster.fixed_nodes=false`` as the way to wait for an autoscaler's GPU nodes."""
    live = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(_holds(n, cpus, gpus) for n in live):
        return None
    asked = f"resources.cpus_per_trial: {cpus:g}" + (
        f", resources.gpus_per_trial: {gpus:g}" if gpus > 0 else "")
    total_gpus = ray.cluster_resources().get("GPU", 0)
    if fixed_nodes is True:
        short, why, allowed = _short(live, cpus, gpus, "the largest node of the Ray "
                                     + ("runtime" if local else "cluster"))
        if gpus > 0 and total_gpus == 0:
            why, allowed = "the Ray cluster has 0 GPUs", "0 here (CPU), or a cluster with GPUs"
        elif local and short == "CPU":
            allowed += (" (a local Ray: the CPUs this process may use, its affinity mask or "
                        "cgroup quota), or cluster.num_cpus=N for a local Ray of N CPUs")
        raise ConfigError(f"{asked}, but {why} (a trial runs on one node); allowed: {allowed}")
    groups = node_groups(ray)
    if groups is not None:
        if not any(_holds(g, cpus, gpus) for g in groups):
            _, why, allowed = _short(live + groups, cpus, gpus, "the largest node of the Ray "
                                     "cluster or node group of its autoscaler")
            raise ConfigError(f"{asked}, but {why} (a trial runs on one node); allowed: "
                              f"{allowed}")
        wait = "its autoscaler starts one (a node group holds it)"
    elif fixed_nodes is None and gpus > 0 and total_gpus < gpus:
        raise ConfigError(
            f"resources.gpus_per_trial: {gpus:g}, but the Ray cluster has {total_gpus:g} GPUs "
            "in all; allowed: 0 (CPU), "
            + (f"at most {total_gpus:g}, " if total_gpus > 0 else "a cluster with GPUs, ")
            + "or cluster.fixed_nodes=false where an autoscaler adds GPU nodes")
    else:
        wait = "one joins (an autoscaler's); cluster.fixed_nodes=true refuses them instead"
    need = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus > 0 else "")
    return (f"note: no node of the Ray cluster holds a trial of {need} now (a trial runs on one "
            f"node): trials wait until {wait}")


def check_cpus(ray, per_trial: float) -> None:
    """A one-line refusal when trials ask for more CPUs than any node of a Ray this process had
    started before the sweep (a notebook's), which ``start_ray`` reuses (``cluster.num_cpus``
    would not change it): they would wait forever. (Once Ray runs for the sweep,
    ``check_trials_fit`` asks the same of every runtime.)"""
    have = _largest_node(ray, "CPU")
    _refuse_cpus(per_trial, have, f"the Ray this process runs already has {have:g} CPUs",
                 fix=False)


def _refuse_cpus(per_trial: float, have: float, why: str, fix: bool = True) -> None:
    """ConfigError "resources.cpus_per_trial: X, but ``why``; allowed: ..." when
    ``per_trial`` > ``have``; ``fix``: name cluster.num_cpus as the other way out."""
    if per_trial > have:
        raise ConfigError(f"resources.cpus_per_trial: {per_trial:g}, but {why}; allowed: at most "
                          f"{have:g}" + (", or cluster.num_cpus=N for a local Ray of N CPUs"
                                         if fix else ""))


def check_resources(cfg: SweepConfig) -> None:
    """What ``Tasks`` checks once Ray runs, asked before a new sweep is planned: trials that ask
    for more CPUs than the local Ray will have (``cluster.num_cpus``, else
    ``workers.cores.usable_cores``: no Ray needed; a Ray this process runs already: its nodes),
    or for GPUs it lacks (a local Ray started here for that question only when trials ask for
    GPUs), and on a cluster (connected to, ``start_ray``) what ``check_trials_fit`` refuses
    there. A ConfigError in one line, else nothing (a note of trials that will wait is
    ``Tasks``' to say)."""
    res = cfg.resources
    running = sys.modules.get("ray")  # (a Ray this process runs already is the one used)
    if cfg.cluster.address is None and running is not None and running.is_initialized():
        check_cpus(running, res.cpus_per_trial)
    elif cfg.cluster.address is None:
        num = cfg.cluster.num_cpus
        if num is not None:
            _refuse_cpus(res.cpus_per_trial, num, f"cluster.num_cpus is {num}")
        else:
            from workers.cores import usable_cores

            have = usable_cores()
            _refuse_cpus(res.cpus_per_trial, have, f"this process may use {have} CPUs (its "
                         "affinity mask, e.g. a SLURM allocation's, or a cgroup quota)")
    if cfg.cluster.address is not None:
        check_trials_fit(start_ray(cfg), res.cpus_per_trial, res.gpus_per_trial,
                         cfg.cluster.fixed_nodes)
    elif res.gpus_per_trial > 0:
        check_trials_fit(start_ray(cfg), res.cpus_per_trial, res.gpus_per_trial, True,
                         local=True)


def local_runtime_exited(ray) -> str | None:
    """For a local Ray this driver started: which of its raylet and GCS processes exited (a
    cheap poll of processes we hold), else None."""
    for name, proc in _local_ray_roots(ray):
        if proc.poll() is not None:
            return f"the local Ray runtime's {name} exited"
    return None


def runtime_lost(ray, exc: BaseException | None = None) -> str | None:
    """Why the Ray runtime as a whole is gone (not a single worker or node), or None.

    A local Ray that this driver started is gone once its raylet or GCS process has exited (we
    hold their processes); any runtime is gone when it does not answer a cluster query within
    RUNTIME_PROBE_S seconds (a dead head of a remote cluster, a killed local GCS) or fails it
    (its error named)."""
    import ray.exceptions as rex

    from sweep.watch import _in_thread, first_line

    why = local_runtime_exited(ray)
    if why is not None:
        return why
    if isinstance(exc, rex.LocalRayletDiedError):
        return "the local raylet died"
    probe, box = _in_thread(ray.cluster_resources)  # (a hung head: the thread is left)
    probe.join(RUNTIME_PROBE_S)
    if "error" in box:
        return f"the Ray runtime failed a cluster query ({first_line(box['error'])})"
    if probe.is_alive():
        return f"the Ray runtime did not answer for {RUNTIME_PROBE_S:g} s"
    return None


