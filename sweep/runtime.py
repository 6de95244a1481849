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
    """The resources of each node group an autoscaler may start (``max_count`` not 0), as the
    autoscaler reported them to the GCS (Ray's ``ClusterConfig``, read as Ray Data reads it:
    ``ray._private.state.state.get_cluster_config()``; private API, in one place); None where
    no autoscaler reported one (Ray 2.60's own autoscalers do not) or it cannot be read."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # (a Ray without it, a stand-in, a runtime that cannot answer)
        return None
    if config is None or not config.node_group_configs:
        return None
    return [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]


def check_trials_fit(ray, cpus: float, gpus: float, fixed_nodes: bool | None) -> str | None:
    """Whether a trial asking ``cpus`` CPUs and ``gpus`` GPUs can ever be placed (a task runs
    on one node; one that never can would wait forever): a one-line ConfigError where it
    cannot, else a note to log where trials will wait for a node to join, else None.

    ``fixed_nodes`` True, where no node joins (a local Ray; ``cluster.fixed_nodes=true``, each
    `sweep slurm` job's): against the largest live node. Otherwise, where an autoscaler
    reported its node groups (``node_groups``): against the largest live node or node group.
    Without that report, False (``cluster.fixed_nodes=false``: an autoscaler adds nodes)
    refuses nothing; None (not said: the default) refuses GPU trials where the whole cluster
    has fewer GPUs than one trial (GPUs asked of a CPU cluster), naming
    ``cluster.fixed_nodes=false`` as the way to wait for an autoscaler's GPU nodes."""
    if fixed_nodes is True:
        check_cpus(ray, cpus)
    groups = None if fixed_nodes is True else node_groups(ray)
    waits = []
    for key, resource, per_trial in (("resources.cpus_per_trial", "CPU", cpus),
                                     ("resources.gpus_per_trial", "GPU", gpus)):
        top = _largest_node(ray, resource)
        if per_trial <= 0 or per_trial <= top:
            continue
        total = ray.cluster_resources().get(resource, 0)
        if fixed_nodes is True:
            if total < per_trial:
                raise ConfigError(f"{key}: {per_trial:g}, but the Ray cluster has {total:g} "
                                  "GPUs; allowed: 0 here (CPU), or a cluster with GPUs")
            raise ConfigError(f"{key}: {per_trial:g}, but the largest node of the Ray cluster "
                              f"has {top:g} GPUs (a trial runs on one node); allowed: at most "
                              f"{top:g}")
        if groups is not None:
            grown = max((g.get(resource, 0) for g in groups), default=0)
            if per_trial > grown:
                raise ConfigError(
                    f"{key}: {per_trial:g}, but no node of the Ray cluster has more than {top:g} "
                    f"{resource}s, nor any node group of its autoscaler more than {grown:g} (a "
                    f"trial runs on one node); allowed: at most {max(top, grown):g}")
        elif fixed_nodes is None and resource == "GPU" and total < per_trial:
            raise ConfigError(
                f"{key}: {per_trial:g}, but the Ray cluster has {total:g} GPUs; allowed: 0 "
                "(CPU), a cluster with GPUs, or cluster.fixed_nodes=false where an autoscaler "
                "adds GPU nodes")
        waits.append(f"{per_trial:g} {resource}s")
    if not waits:
        return None
    return (f"note: no node of the Ray cluster has {' and '.join(waits)} now (a trial runs on "
            "one node): trials wait until "
            + ("its autoscaler starts one (a node group has them)" if groups is not None else
               "one joins (an autoscaler's); cluster.fixed_nodes=true refuses them instead"))


def check_cpus(ray, per_trial: float, running: bool = False) -> None:
    """A one-line refusal when trials ask for more CPUs than any live node of the Ray runtime
    has (a task runs on one node: they would wait forever). The caller asks it where no node
    can join later: a local Ray (the CPUs this process may use, ``workers.cores.usable_cores``,
    unless ``cluster.num_cpus`` says otherwise) or a cluster with ``cluster.fixed_nodes``.
    ``running``: a Ray this process had started before the sweep (a notebook's), which
    ``start_ray`` reuses (``cluster.num_cpus`` would not change it)."""
    have = _largest_node(ray, "CPU")
    if running:
        _refuse_cpus(per_trial, have, f"the Ray this process runs already has {have:g} CPUs",
                     fix=False)
    else:
        _refuse_cpus(per_trial, have, f"the largest node of the Ray runtime has {have:g} CPUs "
                     "(a local Ray: those this process may use, its affinity mask or cgroup "
                     "quota, unless cluster.num_cpus says otherwise)")


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
    ``workers.cores.usable_cores``: no Ray needed; a Ray this process runs already: its nodes)
    or for GPUs the Ray runtime lacks (started here for that question: a local Ray only when
    trials ask for GPUs; a cluster is connected to, ``start_ray``). A ConfigError in one line,
    else nothing."""
    res = cfg.resources
    running = sys.modules.get("ray")  # (a Ray this process runs already is the one used)
    if cfg.cluster.address is None and running is not None and running.is_initialized():
        check_cpus(running, res.cpus_per_trial, running=True)
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
        check_trials_fit(start_ray(cfg), 0, res.gpus_per_trial, True)


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
    RUNTIME_PROBE_S seconds (a dead head of a remote cluster, a killed local GCS)."""
    import threading

    import ray.exceptions as rex

    why = local_runtime_exited(ray)
    if why is not None:
        return why
    if isinstance(exc, rex.LocalRayletDiedError):
        return "the local raylet died"
    answer: list = []
    probe = threading.Thread(target=lambda: answer.append(ray.cluster_resources()), daemon=True)
    probe.start()
    probe.join(RUNTIME_PROBE_S)
    if not answer:
        return f"the Ray runtime did not answer for {RUNTIME_PROBE_S:.0f} s"
    return None


