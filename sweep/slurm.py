"""``sweep slurm``: run a sweep as a chain of SLURM batch jobs (docker/README.md "SLURM").

From a login node, ``sweep slurm [KEY=VALUE ...] --nodes N --gpus-per-node G --time T
--partition P`` plans the sweep directory (as ``sweep plan``), writes the batch script
``<sweep>/slurm/sweep.sbatch`` (``batch_script``: plain bash, meant to be read and edited, e.g.
``module load`` lines) and submits it with ``sbatch``. Each job of the chain:

1. starts Ray across its allocation, as Ray's SLURM recipe does: the head on the first node
   (the batch host), a worker on each other node, each an ``srun`` step with the CPUs Slurm
   gave that node and ``G`` GPUs;
2. runs the driver against it: ``sweep resume <sweep> cluster.address=<head>:<port>`` (every job
   is a resume: the plan was written by ``sweep slurm`` itself);
3. at ``--signal-before`` seconds before its time limit Slurm sends the batch shell SIGUSR1
   (``#SBATCH --signal=B:USR1@S``): the script submits the next job
   (``sbatch --dependency=afterany:<this job>``, the same file) and sends the driver SIGTERM,
   which stops dispatching and lets running trials finish (sweep.dispatch.GRACE_S);
4. when the driver exits 0, ``python -m sweep.slurm next`` (``next_step``) decides: nothing
   left (every planned trial has a finished result): the next job, if one was submitted, is
   cancelled and the chain ends; trials left (retryable failures: a node died, a trial ran over
   ``resources.trial_timeout``): the chain goes on with a next job, unless ``STALLED_JOBS`` jobs
   in a row finished no trial, when it stops with that reason (in ``jobs.tsv``, shown by
   ``sweep status``) and ``sbatch <sweep>/slurm/sweep.sbatch`` continues it by hand;
5. when the driver was stopped at the time limit, ``python -m sweep.slurm limit``
   (``limit_step``) decides: the next job goes on, unless ``STALLED_JOBS`` jobs in a row neither
   finished a trial nor wrote a checkpoint (a trial longer than one job, without
   ``resources.trial_timeout`` or ``train.checkpoint_every``): then the job submitted at the
   signal is cancelled and the chain stops with that reason. If a helper fails, a job already
   submitted stays (its own driver decides again). A cancel (TERM) at any moment ends the job
   ``cancelled`` and submits nothing; a job submitted at the time-limit signal before it stays
   (Slurm also sends TERM at the limit). sbatch may fail after Slurm accepted the job: before
   a second submit the script looks for a pending job of the chain (``squeue --name``).

Why a new job and not ``scontrol requeue``: a requeued batch job keeps its id but Slurm makes it
wait (``Reason=BeginTime``, about two minutes on Slurm 22.05) before it may start again, and
requeueing needs ``--requeue`` and a site that allows it; a dependent job starts as soon as
this one ends, needs nothing but ``sbatch``, and has its own log and accounting record. The
successor is submitted when the signal arrives, not after the driver stopped, so the chain goes
on even if the job is killed at its limit before the script ends.

Every job's events are appended to ``<sweep>/slurm/jobs.tsv`` (``JOB_COLUMNS``; a job's
``left`` event, at its start, holds how many planned trials had no finished result then);
``sweep status`` names the jobs (``chain_status``). The sweep directory must be on a file system
the nodes share (the script, its logs and the job list are files that Slurm and bash write).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workers.results.layout import SLURM_JOBS, SLURM_LOGS, SLURM_SCRIPT

JOB_COLUMNS = ("job_id", "event", "time", "nodes", "detail")
SIGNAL_BEFORE_S = 300  # default lead of the stop signal: the driver's 30 s grace, ample margin
SIGNAL_MAX_S = 65535  # Slurm's bound on --signal's time
RAY_WAIT_S = 180  # how long a job waits for its Ray nodes to join before it gives up
STALLED_JOBS = 2  # the chain stops after this many jobs in a row that finished no trial
SQUEUE_TIMEOUT_S = 5.0
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class SlurmOptions:
    """The allocation of each job of the chain. ``time``: Slurm's format (minutes, MM:SS,
    HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS); ``signal_before``: seconds before the limit at which
    the job stops its driver and submits the next."""

    nodes: int = 1
    gpus_per_node: int = 0
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    signal_before: int | None = None  # None: SIGNAL_BEFORE_S, at most half the time limit

    def resolved(self) -> "SlurmOptions":
        """These options with ``signal_before`` filled in (``time`` checked first)."""
        if self.signal_before is not None:
            return self
        lead = min(SIGNAL_BEFORE_S, time_seconds(self.time) // 2)
        return SlurmOptions(self.nodes, self.gpus_per_node, self.time, self.partition,
                            self.account, lead)


def time_seconds(spec: str) -> int:
    """Seconds of a Slurm time limit (``sbatch --time``: ``M``, ``M:S``, ``H:M:S``, ``D-H``,
    ``D-H:M``, ``D-H:M:S``). ValueError for anything else or a limit under one minute."""
    m = _TIME_RE.match(spec.strip())
    if not m:
        raise ValueError(spec)
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        secs = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif b is None:  # M
        secs = a * 60
    elif c is None:  # M:S
        secs = a * 60 + b
    else:  # H:M:S
        secs = a * 3600 + b * 60 + c
    if secs < 60:
        raise ValueError(spec)
    return secs


def check_options(opts: SlurmOptions, gpus_per_trial: float = 0.0) -> None:
    """ConfigError (one line: the option and what is allowed) for options Slurm or the sweep
    cannot use; before anything is written."""
    from sweep.config import ConfigError

    if opts.nodes < 1:
        raise ConfigError(f"--nodes: {opts.nodes}; allowed: an integer >= 1")
    if opts.gpus_per_node < 0:
        raise ConfigError(f"--gpus-per-node: {opts.gpus_per_node}; allowed: an integer >= 0")
    try:
        limit = time_seconds(opts.time)
    except ValueError:
        raise ConfigError(f"--time: {opts.time!r}; allowed: a Slurm time limit of at least one "
                          "minute: MINUTES, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS") from None
    opts = opts.resolved()
    if not 1 <= opts.signal_before <= SIGNAL_MAX_S or opts.signal_before >= limit:
        raise ConfigError(f"--signal-before: {opts.signal_before}; allowed: seconds in "
                          f"[1, {min(SIGNAL_MAX_S, limit - 1)}] (below the time limit, "
                          f"{limit} s)")
    for key, value in (("--partition", opts.partition), ("--account", opts.account)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.,:+-]+", value):
            raise ConfigError(f"{key}: {value!r}; allowed: a Slurm name (letters, digits, "
                              "_ . - , : +)")
    if gpus_per_trial > 0 and gpus_per_trial > opts.gpus_per_node:
        raise ConfigError(f"--gpus-per-node: {opts.gpus_per_node}, but resources.gpus_per_trial "
                          f"is {gpus_per_trial:g}; allowed: --gpus-per-node >= "
                          f"{gpus_per_trial:g}, or resources.gpus_per_trial=0")


def job_name(sweep_dir: str | Path) -> str:
    """The jobs' name (``scancel --name`` cancels the chain): ``sweep-``, the directory's name
    and 6 hex digits of its whole path (two sweeps in directories of the same name, e.g.
    ``a/sweep`` and ``b/sweep``, had one name, so that ``scancel --name`` cancelled both
    chains), at most 64 characters."""
    import hashlib

    tag = hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:6]
    return ("sweep-" + re.sub(r"[^A-Za-z0-9._-]", "_", Path(sweep_dir).name))[:57] + "-" + tag


def chain_name(sweep_dir) -> str:
    """The name the sweep's chain runs under: its script's ``JOB_NAME`` (a chain keeps the name
    it was submitted with; older releases named it without the path's digits), else
    ``job_name``."""
    from workers.results.sweep_dir import SweepDir

    try:
        text = SweepDir.of(sweep_dir).read_text(SLURM_SCRIPT)
        m = re.search(r"^JOB_NAME=(\S+)", text, re.M)
        if m:
            return shlex.split(m.group(1))[0]
    except (OSError, ValueError, IndexError):
        pass
    return job_name(store_location(sweep_dir))


def resume_overrides(overrides: list[str]) -> list[str]:
    """The overrides of ``sweep slurm`` that each job passes on to ``sweep resume`` (where and
    how trials run, sweep.driver.RESUMABLE_KEYS), without ``cluster.*``, which the job sets."""
    from sweep.config import override_key
    from sweep.driver import RESUMABLE_KEYS

    keep = []
    for o in overrides:
        key = override_key(o)[1]
        if key == "cluster" or key.startswith("cluster."):
            continue
        if "=" in o and any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS):
            keep.append(o)
    return keep


def batch_script(sweep_dir: str | Path, opts: SlurmOptions, overrides: list[str] = (),
                 bin_dir: str | Path | None = None, workdir: str | Path | None = None) -> str:
    """The batch script of the sweep at ``sweep_dir`` (an absolute path on a shared file
    system) for allocations ``opts``; each job runs ``sweep resume <sweep_dir>`` with
    ``overrides`` (already limited to resumable keys). ``bin_dir``: where the nodes find
    ``sweep``, ``ray`` and ``python`` (default: this interpreter's directory); ``workdir``:
    the jobs' working directory (default: the current one)."""
    d = Path(sweep_dir)
    opts = opts.resolved()
    bin_dir = Path(bin_dir if bin_dir is not None else Path(sys.executable).parent)
    workdir = Path(workdir if workdir is not None else os.getcwd())
    q = shlex.quote
    sbatch = [f"--job-name={job_name(d)}"]
    if opts.partition:
        sbatch.append(f"--partition={opts.partition}")
    if opts.account:
        sbatch.append(f"--account={opts.account}")
    sbatch += [f"--nodes={opts.nodes}", "--ntasks-per-node=1", "--exclusive", "--mem=0"]
    if opts.gpus_per_node:
        sbatch.append(f"--gpus-per-node={opts.gpus_per_node}")
    sbatch += [f"--time={opts.time}", f"--signal=B:USR1@{opts.signal_before}",
               f"--chdir={workdir}", f"--output={d / SLURM_LOGS}/slurm-%j.out",
               "--open-mode=append"]
    # (a value with a space in double quotes, which sbatch's directive parser reads)
    directives = "\n".join(f"#SBATCH {s}" if " " not in s else
                           '#SBATCH {}="{}"'.format(*s.split("=", 1)) for s in sbatch)
    resume = shlex.join(["sweep", "resume", str(d)]) + ' cluster.address="$address"' \
        + " cluster.fixed_nodes=true"
    if overrides:
        resume += " " + shlex.join(overrides)
    gpu_step = f" --gpus-per-node={opts.gpus_per_node}" if opts.gpus_per_node else ""
    return f"""#!/bin/bash
# One job of the chain that runs the sweep {d}; written by `sweep slurm`
# (sweep/slurm.py, docker/README.md "SLURM"). Edit freely: every job of the chain runs this
# file as it is when the job is submitted (the next job is submitted from this path).
{directives}

# ---- your environment: load modules, activate an environment. Every node must find the
# `sweep`, `ray` and `python` commands of one installation (here: the one that wrote this file).
# module load cuda/12.4
export PATH={q(str(bin_dir))}:"$PATH"

SWEEP_DIR={q(str(d))}
SCRIPT={q(str(d / SLURM_SCRIPT))}
JOBS={q(str(d / SLURM_JOBS))}
GPUS_PER_NODE={opts.gpus_per_node}
JOB_NAME={q(job_name(d))}  # the chain's jobs' name (squeue --name, scancel --name)
# trials left after the driver finished (retryable failures: a node died, a trial ran over
# resources.trial_timeout) or was stopped at the time limit: the chain goes on, but stops after
# this many jobs in a row that finished no trial (and, at the time limit, wrote no checkpoint)
# (`python -m sweep.slurm next` / `limit`, sweep/slurm.py next_step / limit_step)
STALLED_JOBS={STALLED_JOBS}
# the driver knows it runs in a job of the chain (its stop says: the chain goes on)
export SWEEP_SLURM_JOB="$SLURM_JOB_ID"
# Ray's token authentication with a token of this job's own (srun passes it to every node)
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))'); export RAY_AUTH_TOKEN
# Ray's ports, derived from the job id so that two jobs on one node do not collide
RAY_PORT=$((20000 + SLURM_JOB_ID % 10000 * 3))

now() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
note() {{ echo "sweep-slurm $(now) job $SLURM_JOB_ID: $*"; }}
record() {{  # record JOB EVENT DETAIL: one line of $JOBS (`sweep status` reads it)
  printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$1" "$2" "$(now)" "$SLURM_JOB_NODELIST" "$3" >> "$JOBS"
}}

# ---- the time limit: Slurm sends this shell USR1 --signal-before seconds ahead. Submit the
# next job (it starts when this one ends), then stop the driver: no new trials, running ones
# get 30 s to finish (sweep/dispatch.py). A cancelled job (scancel: TERM) stops the same way
# and submits no next job from then on, whenever the TERM comes -- except Slurm's own TERM at
# the time limit (squeue gives the job's reason as TimeLimit), which counts as the time-limit
# signal.
stopping=""; cancelled=""; next=""; child=""  # child: the command the script waits for
tried=""  # sbatch was run once (it may have failed after Slurm accepted the job)
queued_successor() {{  # a pending job of this chain, this user's, other than this one
  squeue --name="$JOB_NAME" --user="${{USER:-$(id -un)}}" --states=PENDING -h -o %i \\
    2>/dev/null | grep -v -x "$SLURM_JOB_ID" | head -n1
}}
submit_next() {{  # the next job of the chain (it starts when this one ends): its id in $next
  [ -z "$cancelled" ] || return 0  # a cancelled job submits nothing
  if [ -n "$tried" ]; then  # a job of this chain already queued (an earlier sbatch's)? use it
    next=$(queued_successor)
    if [ -n "$next" ]; then
      record "$next" submitted "continues job $SLURM_JOB_ID (found queued after sbatch failed)"
      return 0
    fi
  fi
  tried=1
  if next=$(sbatch --parsable --dependency="afterany:$SLURM_JOB_ID" "$SCRIPT"); then
    next=${{next%%;*}}
    record "$next" submitted "continues job $SLURM_JOB_ID"
  else
    next=""
  fi
}}
on_time_limit() {{  # on_time_limit [WHY]
  [ -n "$stopping" ] && return
  stopping=time-limit
  record "$SLURM_JOB_ID" stopping "${{1:-time limit in {opts.signal_before} s or less}}"
  submit_next
  if [ -n "$next" ]; then
    note "time limit near: stopping the driver; job $next continues the sweep"
  else
    note "time limit near: stopping the driver; could not submit the next job (sbatch failed)"
  fi
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}}
at_time_limit() {{  # true when Slurm reports this job ended by its time limit (squeue's
  # reason TimeLimit, set before Slurm's TERM at the limit; a scancel leaves it None): a TERM
  # then is Slurm's own. False when squeue does not answer within 10 s (then: a cancel)
  [ "$(timeout 10 squeue -h -j "$SLURM_JOB_ID" -o %r 2>/dev/null | head -n1)" = TimeLimit ]
}}
on_cancel() {{  # whatever the job is doing: the outcome is "cancelled", nothing is submitted
  # -- unless the TERM is Slurm's at the time limit (no USR1 came before it, e.g. a limit
  # shorter than --signal's lead): that stops the driver as USR1 does and the chain goes on
  if [ -z "$cancelled" ]; then
    cancelled=1  # (meanwhile a USR1 submits nothing: submit_next checks it)
    if at_time_limit; then
      cancelled=""
      on_time_limit "time limit reached (TERM from Slurm, no time-limit signal before it)"
      return
    fi
  fi
  cancelled=1
  if [ -z "$stopping" ]; then
    stopping=cancelled
    # recorded at once: Slurm kills the job KillWait seconds (30 by default) after its TERM,
    # which may come before the driver's grace and the end step are over
    record "$SLURM_JOB_ID" stopping "cancelled (TERM: scancel)"
  fi
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}}
run() {{  # run COMMAND...: in the background, so that the traps above run at once; its exit code
  "$@" &
  child=$!
  [ -n "$stopping" ] && kill -TERM "$child" 2>/dev/null
  while kill -0 "$child" 2>/dev/null; do sleep 1 & wait $!; done
  wait "$child"
  local status=$?
  child=""
  return "$status"
}}
trap on_time_limit USR1
trap on_cancel TERM INT

record "$SLURM_JOB_ID" started "restart ${{SLURM_RESTART_COUNT:-0}}"
note "started on $SLURM_JOB_NODELIST"
# how many planned trials have no finished result yet (next_step compares it with the end's)
if left=$(python -m sweep.slurm left "$SWEEP_DIR"); then
  record "$SLURM_JOB_ID" left "$left"
fi

# ---- Ray across the allocation (Ray's SLURM recipe): the head on this, the first, node, a
# worker on each other node; each an srun step with the node's CPUs and GPUS_PER_NODE GPUs.
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${{nodes[0]}}
# the head's address as the other nodes reach it: its first IPv4 address outside loopback
# (Debian's /etc/hosts maps the host name to 127.0.1.1); SWEEP_SLURM_HEAD_IP overrides it
ips=$(hostname --ip-address | tr ' ' '\\n' | grep -E '^[0-9.]+$')
head_ip=${{SWEEP_SLURM_HEAD_IP:-$(echo "$ips" | grep -m1 -v '^127[.]' || echo "$ips" | head -n1)}}
address="$head_ip:$RAY_PORT"
ray_steps=()
start_ray() {{  # start_ray NODE RAY-START-OPTIONS...
  local node=$1; shift
  srun --nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_ON_NODE" --overlap -w "$node"{gpu_step} \\
    bash -c 'exec ray start --num-cpus="$SLURM_CPUS_ON_NODE" "$@" --block' ray-start \\
    --num-gpus="$GPUS_PER_NODE" --disable-usage-stats "$@" &
  ray_steps+=($!)
}}
start_ray "$head" --head --node-ip-address="$head_ip" --port="$RAY_PORT" \\
  --dashboard-agent-listen-port=$((RAY_PORT + 1)) --include-dashboard=false
for node in "${{nodes[@]:1}}"; do
  start_ray "$node" --address="$address" --dashboard-agent-listen-port=$((RAY_PORT + 1))
done
stop_ray() {{ kill -TERM "${{ray_steps[@]}}" 2>/dev/null; wait "${{ray_steps[@]}}" 2>/dev/null; }}

rc=0; driver_rc=""
# wait (at most {RAY_WAIT_S} s) until every node joined the head (or the head's step ended)
run python -m sweep.slurm wait-ray "$address" "${{#nodes[@]}}" {RAY_WAIT_S} "${{ray_steps[0]}}"
rc=$?
if [ -z "$stopping" ] && [ "$rc" -ne 0 ]; then
  note "Ray did not start on all ${{#nodes[@]}} node(s)"
elif [ -z "$stopping" ]; then
  # ---- the driver: every job of the chain resumes the planned sweep
  run {resume}
  rc=$?; driver_rc=$rc
fi
# from here on a time-limit signal submits nothing by itself: the end step decides
if [ -z "$stopping" ]; then
  if [ "$driver_rc" = 0 ]; then stopping=finished; else stopping=ended; fi
fi

# ---- what next. The driver's exit 0: it ran every trial it could; what is left decides
# (sweep/slurm.py next_step): "done" (nothing left: the next job, if any, is cancelled),
# "continue" (retryable failures left: a next job runs them) or "stop" (STALLED_JOBS jobs in a
# row finished no trial: the chain ends with that reason, exit 1). The driver stopped at the
# time limit: the next job goes on, unless STALLED_JOBS jobs in a row neither finished a trial
# nor wrote a checkpoint (sweep/slurm.py limit_step: a trial longer than a job, without
# checkpoints, would be cut at every limit): then the chain ends, exit 1. A cancel (TERM), at
# any moment, decides over all of these.
cancel_next() {{  # cancel_next WHY: cancel the next job, if one was submitted (or one that
  # sbatch reported failed but Slurm accepted: queued_successor)
  [ -n "$next" ] || [ -z "$tried" ] || next=$(queued_successor)
  [ -n "$next" ] && scancel "$next" && record "$next" cancelled "$1 after job $SLURM_JOB_ID"
  next=""
}}
decision=""
if [ -z "$cancelled" ] && [ "$driver_rc" = 0 ]; then
  [ -n "$stopping" ] || stopping=finished  # (a time-limit signal from here on changes nothing)
  decision=$(python -m sweep.slurm next "$SWEEP_DIR" "$STALLED_JOBS") || decision=failed
elif [ -z "$cancelled" ] && [ "$stopping" = time-limit ]; then
  decision=$(python -m sweep.slurm limit "$SWEEP_DIR" "$STALLED_JOBS") || decision=failed
fi
action=${{decision%%$'\\t'*}}; said=${{decision#*$'\\t'}}
if [ -n "$cancelled" ]; then  # checked last: a TERM may have come while the helpers ran
  outcome="cancelled"
  if [ -n "$next" ] && [ "$stopping" = time-limit ]; then
    # submitted at the time-limit signal (Slurm also sends TERM at the limit): it stays
    outcome="$outcome; job $next, submitted at the time-limit signal, continues the sweep"
    outcome="$outcome (scancel $next to end the chain)"
  else
    cancel_next "job cancelled"
  fi
elif [ "$action" = failed ]; then
  if [ -n "$next" ]; then  # submitted at the time-limit signal: its own driver decides again
    outcome="python -m sweep.slurm could not decide; job $next (submitted at the time-limit"
    outcome="$outcome signal) continues the sweep"
  else
    outcome="stopped: python -m sweep.slurm could not decide; continue with: sbatch $SCRIPT"
  fi
  rc=1
elif [ "$action" = continue ]; then
  [ -n "$next" ] || submit_next
  if [ -n "$cancelled" ]; then  # TERM during sbatch
    outcome="cancelled"; cancel_next "job cancelled"
  elif [ -n "$next" ]; then
    outcome="$said; continued by job $next"; rc=0
    [ "$driver_rc" = 0 ] || outcome="stopped before its time limit; $outcome"
  else
    outcome="$said; could not submit the next job (sbatch failed); continue with:"
    outcome="$outcome sbatch $SCRIPT"
    rc=1
  fi
elif [ "$action" = done ]; then
  outcome="$said"
  cancel_next "nothing left"
elif [ "$action" = stop ]; then
  outcome="$said"
  cancel_next "the chain stopped"
  rc=1
else
  outcome="failed (driver exit $rc); continue with: sbatch $SCRIPT"
fi
record "$SLURM_JOB_ID" ended "$outcome"
note "$outcome"
stop_ray
exit "$rc"
"""


def local_sweep_dir(location: str) -> Path:
    """The absolute path of a sweep directory on a file system (the nodes must share it);
    ConfigError for an object-store URI."""
    from sweep.config import ConfigError
    from workers.results.storage import is_uri

    if is_uri(location):
        raise ConfigError(f"out: {location}: sweep slurm needs a sweep directory on a file "
                          "system the nodes share (its batch script, logs and job list are "
                          "files Slurm writes); allowed: a path")
    return Path(os.path.expanduser(location)).resolve()


def record(sweep_dir: str | Path, job_id: str, event: str, detail: str = "",
           nodes: str = "") -> None:
    """Append one line to the sweep's job list (``JOB_COLUMNS``); the batch script writes the
    same lines."""
    path = Path(sweep_dir) / SLURM_JOBS
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a") as f:
        f.write("\t".join((str(job_id), event, stamp, nodes, detail)) + "\n")


def submit(script: str | Path) -> str:
    """``sbatch --parsable script``: the job id. RuntimeError (one line) when sbatch fails."""
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch: not found; run sweep slurm on a login node of the cluster "
                           "(or --dry-run to print the script)")
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        raise RuntimeError(f"sbatch failed: {lines[-1] if lines else f'exit {r.returncode}'}")
    return r.stdout.strip().split(";")[0]


def prepare(overrides: list[str], opts: SlurmOptions) -> tuple:
    """(configuration, sweep directory, batch script) of ``sweep slurm`` with ``overrides``
    (KEY=VALUE, as ``sweep launch``) and ``opts``; nothing is written. ConfigError (one line)
    for bad input."""
    from sweep.config import ConfigError, override_key
    from sweep.measure import launch_config

    for o in overrides:
        key = override_key(o)[1]
        if key == "cluster.address" or key == "cluster":
            raise ConfigError("cluster.address: set by each SLURM job (its own Ray head); "
                              "allowed: leave it out")
    cfg = launch_config(overrides)  # (a user's measure from the module its values recorded)
    check_options(opts, cfg.resources.gpus_per_trial)
    if opts.partition and "gpu" in opts.partition.lower() and not opts.gpus_per_node:
        print(f"sweep: warning: --partition {opts.partition} without --gpus-per-node: the jobs "
              "ask Slurm for no GPU and Ray sees none; add --gpus-per-node G (and "
              "resources.gpus_per_trial) to train on the partition's GPUs", file=sys.stderr)
    d = local_sweep_dir(cfg.out_dir())
    return cfg, d, batch_script(d, opts, resume_overrides(overrides))


def check_scheduler(timeout: float = 30.0) -> None:
    """ConfigError (one line, before anything is planned or written) unless this machine can
    submit: ``sbatch`` on PATH and the controller answering ``sinfo`` within ``timeout`` s (a
    machine with SLURM's commands but no configuration or controller, e.g. not a login node)."""
    from sweep.config import ConfigError

    hint = "allowed: sweep slurm on a login node of the cluster (--dry-run prints the script)"
    if shutil.which("sbatch") is None:
        raise ConfigError(f"sweep slurm: no sbatch command on this machine; {hint}")
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                           timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(f"sweep slurm: no sinfo command on this machine; {hint}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"sweep slurm: the SLURM controller did not answer sinfo within "
                          f"{timeout:.0f} s; {hint}") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise ConfigError(f"sweep slurm: SLURM cannot be reached from here (sinfo: {why}); "
                          f"{hint}")


def submit_sweep(cfg, sweep_dir: Path, script_text: str) -> str:
    """Plan the sweep (as ``sweep plan``: every check first, so each job is a resume), write
    its batch script and submit it; the job id. ConfigError/DataError before anything is
    written; RuntimeError when sbatch fails (the plan and the script stay)."""
    from sweep import driver
    from sweep.config import ConfigError

    check_scheduler()
    if (sweep_dir / SLURM_JOBS).exists():  # a chain of this sweep queued or running: a second
        jobs = list(dict.fromkeys(r["job_id"] for r in read_jobs(sweep_dir)))  # would race it
        live = queue_states(jobs)
        queued = [j for j in jobs if j in live]
        if queued:
            raise ConfigError(
                f"out: {sweep_dir} has a chain of SLURM jobs in the queue (job {queued[-1]}); "
                f"allowed: wait for it, or cancel it first (scancel --name="
                f"{chain_name(sweep_dir)}); `sweep status {sweep_dir}` shows it")
    driver.plan_only(cfg)
    (sweep_dir / SLURM_LOGS).mkdir(parents=True, exist_ok=True)
    script = sweep_dir / SLURM_SCRIPT
    script.write_text(script_text)
    script.chmod(0o755)
    job = submit(script)
    record(sweep_dir, job, "submitted", "by sweep slurm")
    return job


_VALUED = ("--nodes", "--gpus-per-node", "--time", "--partition", "--account",
           "--signal-before")


def cli_options_first(argv: list[str]) -> list[str]:
    """``argv`` (``["slurm", ...]``) with ``sweep slurm``'s own options moved before the
    KEY=VALUE overrides, so that they may be given anywhere among them."""
    opts, rest, i = [], [], 1
    while i < len(argv):
        a = argv[i]
        if a in _VALUED:
            opts += argv[i:i + 2]
            i += 2
            continue
        if a == "--dry-run" or a.startswith(tuple(v + "=" for v in _VALUED)):
            opts.append(a)
        else:
            rest.append(a)
        i += 1
    return argv[:1] + opts + rest


# ---- what `sweep status` says
def read_jobs(sweep_dir) -> list[dict]:
    """The lines of the sweep's job list as dicts (``JOB_COLUMNS``), oldest first; [] without
    one. ``sweep_dir``: a path or a workers.results Store."""
    from workers.results.storage import store

    d = store(sweep_dir)
    try:
        text = d.read_text(SLURM_JOBS)
    except (OSError, FileNotFoundError):
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0]:
            rows.append(dict(zip(JOB_COLUMNS, parts + [""] * (len(JOB_COLUMNS) - len(parts)))))
    return rows


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """The scheduler's state of each job still known to it (``squeue``), {} without squeue or
    when it does not answer within SQUEUE_TIMEOUT_S."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    try:
        r = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                           capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line.strip())


def chain_status(sweep_dir, shown: int = 5) -> tuple[list[str], bool | None]:
    """(what ``sweep status`` says of the sweep's SLURM jobs: one line per job (the last
    ``shown``), its state (the scheduler's while it knows the job, else the job list's last
    event) and its outcome, [] for a sweep never run by ``sweep slurm``; whether a job of the
    chain is in the scheduler's queue now, None for such a sweep)."""
    rows = read_jobs(sweep_dir)
    if not rows:
        return [], None
    jobs: dict[str, list[dict]] = {}
    for r in rows:
        jobs.setdefault(r["job_id"], []).append(r)
    ids = list(jobs)
    live = queue_states(ids)
    lines = [f"slurm: {len(ids)} job(s) ({SLURM_SCRIPT}; cancel the chain: scancel "
             f"--name={chain_name(sweep_dir)})"]
    for jid in ids[-shown:]:
        events = [e for e in jobs[jid] if e["event"] != "left"] or jobs[jid]
        last = events[-1]
        state = live.get(jid, "").lower()
        started = [e for e in events if e["event"] == "started"]
        where = f" on {started[-1]['nodes']} since {started[-1]['time']}" if started else ""
        if state == "running":
            said = f"running{where}" + ("; stopping before its time limit"
                                        if last["event"] == "stopping" else "")
        elif state:  # pending, completing, ...
            said = f"{state} ({last['event']} {last['time']}: {last['detail']})"
        elif last["event"] in ("ended", "cancelled", "submitted"):
            said = f"{last['event']} {last['time']}: {last['detail']}"
        else:  # started or stopping, and the scheduler no longer knows it (or no squeue)
            said = f"{last['event']} {last['time']}{where}; no end recorded (killed?)"
        lines.append(f"slurm job {jid}: {said}")
    if len(ids) > shown:
        lines.append(f"slurm: ... and {len(ids) - shown} earlier job(s) ({SLURM_JOBS})")
    return lines, bool(live)


def store_location(sweep_dir) -> str:
    return getattr(sweep_dir, "location", str(sweep_dir))


# ---- the batch script's helpers
def trials_left(sweep_dir) -> tuple[int, int]:
    """(planned trials without a finished result, planned trials) of the sweep at ``sweep_dir``:
    what ``sweep resume`` would run (``pending_rows``: no file, an unreadable file or a
    retryable failure); reads only, moves nothing."""
    from workers.results.layout import PLAN_FILE
    from workers.results.plan_file import pending_rows
    from workers.results.sweep_dir import SweepDir

    d = SweepDir.of(sweep_dir)
    ids = d.read_parquet(PLAN_FILE, columns=["trial_id"]).column("trial_id").to_pylist()
    return len(pending_rows(d, ids, move_invalid=False)), len(ids)


def left_at_starts(rows: list[dict]) -> list[int]:
    """The counts of the job list's ``left`` events (trials left at each job's start), oldest
    first; lines that do not parse are skipped."""
    return [count for count, _ in left_events(rows)]


def left_events(rows: list[dict]) -> list[tuple[int, float | None]]:
    """(trials left, the event's time in seconds since the epoch, None if unreadable) of each
    of the job list's ``left`` events (recorded at each job's start), oldest first; lines whose
    count does not parse are skipped."""
    import calendar

    out = []
    for r in rows:
        word = r["detail"].split(" ", 1)[0]
        if r["event"] == "left" and word.isdigit():
            try:
                at = float(calendar.timegm(time.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ")))
            except ValueError:
                at = None
            out.append((int(word), at))
    return out


def newest_checkpoint(sweep_dir) -> float | None:
    """The newest modification time (seconds since the epoch) of a trial's training state in
    the sweep's ``checkpoints/`` (``<trial>.pt``; not the fallback weights, which a restarted
    attempt writes again, nor a save's temporary file), None without one."""
    from workers.results.layout import CHECKPOINT_SUFFIX, CHECKPOINTS, FALLBACK_SUFFIX

    times = []
    for p in (Path(sweep_dir) / CHECKPOINTS).glob(f"*{CHECKPOINT_SUFFIX}"):
        if p.name.endswith(FALLBACK_SUFFIX):  # (rewritten by every restarted attempt)
            continue
        try:
            times.append(p.stat().st_mtime)
        except FileNotFoundError:  # deleted meanwhile: the trial's result stands
            continue
    return max(times, default=None)


def next_step(left: int, planned: int, starts: list[int], stalled_max: int = STALLED_JOBS,
              script: str = SLURM_SCRIPT) -> tuple[str, str]:
    """What the chain does after a job whose driver finished (exit 0), and the words recorded:
    ``("done", ...)`` when no trial is ``left``; ``("continue", ...)`` while trials are left
    (retryable failures); ``("stop", reason)`` when the last ``stalled_max`` jobs each finished
    no trial. ``starts``: trials left at each job's start, oldest first, this job's last
    (``left_at_starts``); a job finished none when the count after it (the next job's start, or
    ``left`` for this one) is not lower than at its start. ``script``: the batch script's path,
    named in the reason to stop."""
    if left == 0:
        return "done", "done: nothing left"
    counts = list(starts) + [left]
    stalled = 0
    for before, after in zip(reversed(counts[:-1]), reversed(counts[1:])):
        if after < before:
            break
        stalled += 1
    said = f"{left} of {planned} trials left (retryable failures)"
    if stalled >= stalled_max:
        return "stop", (f"stopped: {said}; no trial finished in the last {stalled} job(s); "
                        f"see sweep status, then continue with: sbatch {script}")
    return "continue", said


def limit_step(left: int, planned: int, starts: list[tuple[int, float | None]],
               checkpoint_at: float | None, stalled_max: int = STALLED_JOBS,
               script: str = SLURM_SCRIPT) -> tuple[str, str]:
    """Whether the chain goes on after a job stopped at its time limit (its driver cut short),
    and the words recorded: ``("done", ...)`` when no trial is ``left``; ``("continue", ...)``
    unless the last ``stalled_max`` jobs each
    neither finished a trial nor wrote a checkpoint, then ``("stop", reason)``: a trial that
    cannot finish within one job (no ``resources.trial_timeout``, no checkpoints) would
    otherwise be cut at every limit, for ever. ``starts``: (trials left, start time) of each
    job, oldest first, this job's last (``left_events``); ``checkpoint_at``: the newest
    checkpoint's time (``newest_checkpoint``); a job made no progress when the count after it is
    not lower than at its start and no checkpoint is newer than its start (an unknown start time
    counts as progress). ``left``: trials left now."""
    if left == 0:  # the last trials finished as the signal came: the next job is not needed
        return "done", "done: nothing left"
    counts = [c for c, _ in starts] + [left]
    stalled = 0
    for i in range(len(starts) - 1, -1, -1):
        at = starts[i][1]
        wrote = at is None or (checkpoint_at is not None and checkpoint_at >= at)
        if counts[i + 1] < counts[i] or wrote:
            break
        stalled += 1
    said = f"{left} of {planned} trials left"
    if left and stalled >= stalled_max:
        return "stop", (f"stopped at the time limit: {said}; no trial finished and no "
                        f"checkpoint was written in the last {stalled} job(s): a trial needs "
                        "more than one job; set resources.trial_timeout (it then fails, "
                        "retryable) or train.checkpoint_every (it then goes on from its "
                        f"checkpoint), then continue with: sbatch {script}")
    return "continue", said


def wait_ray(address: str, nodes: int, timeout: float, head_pid: int | None = None) -> int:
    """Wait until the Ray cluster at ``address`` has ``nodes`` live nodes (0), or ``timeout``
    seconds passed or process ``head_pid`` (the head's srun step) ended (1, with one line on
    stderr)."""
    import logging
    import socket

    def head_gone() -> bool:
        if head_pid is None:
            return False
        try:
            os.kill(head_pid, 0)
        except ProcessLookupError:
            print(f"sweep-slurm: the Ray head's step (pid {head_pid}) ended", file=sys.stderr)
            return True
        except PermissionError:
            pass
        return False

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout

    def poll(ready, late) -> int:
        """0 once ``ready()``; 1 when the head's step ended or the deadline passed (then
        ``late()`` is the line said)."""
        while not ready():
            if head_gone():
                return 1
            if time.monotonic() > deadline:
                print(f"sweep-slurm: {late()}", file=sys.stderr)
                return 1
            time.sleep(1)
        return 0

    def answers() -> bool:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return True
        except OSError:
            return False

    # the head's GCS port first: ray.init would retry for minutes
    if poll(answers, lambda: f"nothing answers at {address} after {timeout:.0f} s"):
        return 1
    import ray

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        alive = lambda: sum(1 for n in ray.nodes() if n.get("Alive"))  # noqa: E731
        return poll(lambda: alive() >= nodes,
                    lambda: f"{alive()} of {nodes} Ray nodes joined in {timeout:.0f} s")
    finally:
        ray.shutdown()


def _main(argv: list[str]) -> int:
    """The batch script's calls: ``wait-ray`` (``wait_ray``); ``left SWEEP_DIR`` prints ``K of
    N`` (``trials_left``); ``next SWEEP_DIR STALLED_JOBS`` prints the action and the outcome's
    words, tab-separated (``next_step`` over the job list); ``limit SWEEP_DIR STALLED_JOBS`` the
    same after a job stopped at its time limit (``limit_step``)."""
    if argv[:1] == ["wait-ray"] and len(argv) in (4, 5):
        return wait_ray(argv[1], int(argv[2]), float(argv[3]),
                        int(argv[4]) if len(argv) == 5 else None)
    if argv[:1] == ["left"] and len(argv) == 2:
        left, planned = trials_left(argv[1])
        print(f"{left} of {planned}")
        return 0
    if argv[:1] == ["next"] and len(argv) == 3 and argv[2].isdigit() and int(argv[2]) >= 1:
        left, planned = trials_left(argv[1])
        rows, script = read_jobs(argv[1]), str(Path(argv[1]) / SLURM_SCRIPT)
        action, said = next_step(left, planned, left_at_starts(rows), int(argv[2]), script)
        if action == "stop" and limit_step(left, planned, left_events(rows),
                                           newest_checkpoint(argv[1]), int(argv[2]),
                                           script)[0] == "continue":
            # no trial finished, but a checkpoint was written in those jobs: a long trial
            # that spanned time-limited jobs, then failed retryably, goes on
            action, said = "continue", f"{left} of {planned} trials left (retryable failures)"
        print(f"{action}\t{said}")
        return 0
    if argv[:1] == ["limit"] and len(argv) == 3 and argv[2].isdigit() and int(argv[2]) >= 1:
        left, planned = trials_left(argv[1])
        action, said = limit_step(left, planned, left_events(read_jobs(argv[1])),
                                  newest_checkpoint(argv[1]), int(argv[2]),
                                  str(Path(argv[1]) / SLURM_SCRIPT))
        print(f"{action}\t{said}")
        return 0
    print("usage: python -m sweep.slurm wait-ray ADDRESS NODES TIMEOUT_S [HEAD_PID] | "
          "left SWEEP_DIR | next SWEEP_DIR STALLED_JOBS | limit SWEEP_DIR STALLED_JOBS "
          "(STALLED_JOBS: an integer >= 1)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
