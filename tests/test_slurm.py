"""``sweep slurm``: the batch script (fast, no daemons; its decisions at a job's end run by bash
with stub Slurm commands and a stub driver) and a real chain of SLURM jobs on a one-node cluster
on 127.0.0.1 (slow: tests/slurm_cluster.py starts munged, slurmctld, slurmd)."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep import slurm as sl
from sweep.cli import main
from sweep.slurm import SlurmOptions, batch_script, cli_options_first, time_seconds

TINY = ["trials=6", "dataset.train_size=200", "dataset.test_size=80", "train.steps=150",
        "space.width=[16,32]", "space.depth=[2,3]", "space.batch_size=[32]", "progress=false"]


def sbatch_lines(script: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


# ---- the script, without daemons
def test_dry_run_prints_the_script_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "my sweep"
    argv = ["slurm", *TINY, f"out={out}", "--nodes", "2", "--gpus-per-node", "1",
            "resources.cpus_per_trial=2", "--time", "1-12:00:00", "--partition", "gpu",
            "--account=lab", "--signal-before", "600", "--dry-run"]
    assert main(argv) == 0
    script = capsys.readouterr().out
    assert not out.exists()  # nothing written, nothing submitted
    assert script.startswith("#!/bin/bash\n")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    lines = sbatch_lines(script)
    for want in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--time=1-12:00:00",
                 "--partition=gpu", "--account=lab", "--signal=B:USR1@600",
                 "--open-mode=append"):
        assert want in lines, (want, lines)
    # the directory's name and 6 hex digits of its whole path (two `sweep` directories had one
    # name, and `scancel --name` cancelled both chains)
    assert [ln for ln in lines if re.fullmatch(r"--job-name=sweep-my_sweep-[0-9a-f]{6}", ln)]
    assert f'--output="{out}/slurm/slurm-%j.out"' in lines
    # Ray across the allocation: the head on the first node, workers on the others
    assert re.search(r'start_ray "\$head" --head --node-ip-address="\$head_ip" '
                     r'--port="\$RAY_PORT"', script)
    assert re.search(r'start_ray "\$node" --address="\$address"', script)
    assert 'exec ray start --num-cpus="$SLURM_CPUS_ON_NODE"' in script
    assert '--num-gpus="$GPUS_PER_NODE"' in script and "GPUS_PER_NODE=1" in script
    assert "srun --nodes=1 --ntasks=1 --cpus-per-task=\"$SLURM_CPUS_ON_NODE\" --overlap -w \"$node\" --gpus-per-node=1" in script
    # the driver: a resume of the planned sweep against the job's Ray, shell-quoted
    resume = next(line.strip() for line in script.splitlines()
                  if line.strip().startswith("run sweep resume"))
    words = shlex.split(resume.replace('"$address"', "ADDR"))
    assert words == ["run", "sweep", "resume", str(out), "cluster.address=ADDR",
                     "cluster.fixed_nodes=true", "progress=false", "resources.cpus_per_trial=2"]
    # the time limit: trap, the next job after this one, the driver stopped with SIGTERM
    assert "trap on_time_limit USR1" in script
    assert 'sbatch --parsable --dependency="afterany:$SLURM_JOB_ID" "$SCRIPT"' in script
    assert 'kill -TERM "$child"' in script
    assert f"SCRIPT={shlex.quote(str(out / 'slurm' / 'sweep.sbatch'))}" in script
    assert 'scancel "$next"' in script  # nothing left: the next job is cancelled


def test_script_defaults_and_cpu_only(tmp_path):
    script = batch_script(tmp_path / "s", SlurmOptions(time="8"), bin_dir="/opt/env/bin",
                          workdir="/home/me")
    lines = sbatch_lines(script)
    assert "--signal=B:USR1@240" in lines  # at most half the limit
    assert "--nodes=1" in lines and "--chdir=/home/me" in lines
    assert not any(s.startswith(("--partition", "--account", "--gpus")) for s in lines)
    assert "export PATH=/opt/env/bin:" in script and "# module load" in script
    assert "GPUS_PER_NODE=0" in script and "srun --nodes=1 --ntasks=1 --cpus-per-task=\"$SLURM_CPUS_ON_NODE\" --overlap -w \"$node\" \\" \
        in script
    big = batch_script(tmp_path / "s", SlurmOptions(time="2-00:00:00"))
    assert f"--signal=B:USR1@{sl.SIGNAL_BEFORE_S}" in sbatch_lines(big)


@pytest.mark.parametrize("argv, key", [
    (["--time", "0:30"], "--time"),
    (["--time", "soon"], "--time"),
    (["--time", "5", "--signal-before", "300"], "--signal-before"),
    (["--nodes", "0"], "--nodes"),
    (["--partition", "a b"], "--partition"),
    (["resources.gpus_per_trial=1"], "--gpus-per-node"),
    (["cluster.address=auto"], "cluster.address"),
    (["space.widht=[3]"], "space.widht"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, key):
    out = tmp_path / "s"
    assert main(["slurm", *TINY, f"out={out}", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep: error:") and key in err[0], err
    assert not out.exists()


def test_time_formats_and_options_anywhere():
    assert [time_seconds(t) for t in ("90", "1:30", "01:00:00", "1-0", "1-2:3",
                                      "1-02:03:04")] == [5400, 90, 3600, 86400, 93780, 93784]
    assert cli_options_first(["slurm", "a=1", "--nodes", "2", "b=2", "--dry-run",
                              "--time=5"]) == ["slurm", "--nodes", "2", "--dry-run", "--time=5",
                                               "a=1", "b=2"]


def test_status_names_the_jobs(tmp_path, monkeypatch):
    (tmp_path / "slurm").mkdir()
    rows = [("41", "submitted", "", "by sweep slurm"), ("41", "started", "n1", "restart 0"),
            ("41", "stopping", "n1", "time limit"), ("42", "submitted", "n1", "continues job 41"),
            ("41", "ended", "n1", "stopped before its time limit; continued by job 42"),
            ("42", "started", "n2", "restart 0")]
    (tmp_path / "slurm" / "jobs.tsv").write_text(
        "".join(f"{j}\t{e}\t2026-01-01T00:00:00Z\t{n}\t{d}\n" for j, e, n, d in rows))
    monkeypatch.setattr(sl, "queue_states", lambda ids: {"42": "RUNNING"})
    lines = sl.chain_status(str(tmp_path))[0]
    assert lines[0].startswith("slurm: 2 job(s)") and "scancel --name=sweep-" in lines[0]
    assert "slurm job 41: ended" in lines[1] and "continued by job 42" in lines[1]
    assert lines[2].startswith("slurm job 42: running on n2")
    assert sl.chain_status(str(tmp_path / "none"))[0] == []


def test_a_gpu_partition_without_gpus_warns_once(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["slurm", *TINY, f"out={out}", "--partition", "gpu-long", "--dry-run"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep: warning: --partition gpu-long")
    assert "--gpus-per-node" in err[0]
    for argv in (["--partition", "gpu", "--gpus-per-node", "1"], ["--partition", "cpu"], []):
        assert main(["slurm", *TINY, f"out={out}", *argv, "--dry-run"]) == 0
        assert "warning" not in capsys.readouterr().err


# ---- what the chain does after a job: trials left, next_step, the script acting on it
def summary_row(tid: str, status: str = "ok", retryable: bool = False) -> dict:
    from workers.results.record import SUMMARY_COLUMNS

    row = {c: None for c in SUMMARY_COLUMNS}
    row.update(trial_id=tid, status=status, dataset="digits", width=8, depth=3,
               activation="relu", optimizer="sgd", lr=0.1, batch_size=32, init_scale=1.0,
               seed=1, steps=10, train_acc=1.0, test_acc=0.75, spec='{"id": "%s"}' % tid,
               error=None if status == "ok" else "boom", retryable=retryable)
    return row


def make_results(d: Path, kinds: dict[str, str]) -> None:
    """A planned sweep at ``d`` whose trials (in plan order) have result ``kinds[tid]``: "ok",
    "final" (a failure of the trial's own), "retryable" (the system failed), "truncated" (an
    unreadable file) or "none" (no file)."""
    import pyarrow as pa

    from workers.results import layout
    from workers.results.record import write_trial
    from workers.results.storage import store

    for tid, kind in kinds.items():
        if kind in ("ok", "final", "retryable", "truncated"):
            write_trial(d, summary_row(tid, "ok" if kind in ("ok", "truncated") else "failed",
                                       retryable=kind == "retryable"))
        if kind == "truncated":
            f = d / layout.TRIALS / f"{tid}.parquet"
            f.write_bytes(f.read_bytes()[:40])
    store(d).write_parquet(layout.PLAN_FILE, pa.table({"trial_id": list(kinds)}))
    store(d).write_text(layout.SWEEP_FILE, "{}")


def test_trials_left_counts_what_resume_would_run_and_moves_nothing(tmp_path):
    kinds = {"t0": "ok", "t1": "final", "t2": "retryable", "t3": "truncated", "t4": "none",
             "t5": "ok", "t6": "retryable"}
    make_results(tmp_path, kinds)
    before = sorted(p.name for p in (tmp_path / "trials").iterdir())
    want = sum(k in ("retryable", "truncated", "none") for k in kinds.values())
    assert sl.trials_left(tmp_path) == (want, len(kinds)) == (4, 7)
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == before


@pytest.mark.parametrize("left, starts, stalled_max, action", [
    (0, [12], 2, "done"),  # nothing left
    (0, [5, 5, 5], 2, "done"),  # (whatever came before)
    (3, [12], 2, "continue"),  # this job finished 9
    (12, [12], 2, "continue"),  # one job without progress
    (12, [12, 12], 2, "stop"),  # two in a row
    (4, [12, 4], 2, "continue"),  # the job before finished 8, this one none: 1 stalled
    (4, [12, 4, 4], 2, "stop"),
    (4, [12, 4, 4], 3, "continue"),
    (5, [4], 1, "stop"),  # more left than at the start (a file went bad): no progress
    (2, [], 2, "continue"),  # no start recorded: this job alone, unknown, not counted
])
def test_next_step_continues_on_retryable_failures_and_stops_when_stalled(
        left, starts, stalled_max, action):
    got, said = sl.next_step(left, 12, starts, stalled_max, "/s/slurm/sweep.sbatch")
    assert got == action
    if action == "done":
        assert said == "done: nothing left"
    elif action == "continue":
        assert said == f"{left} of 12 trials left (retryable failures)"
    else:
        stalled = 0  # independently: jobs at the end whose next count is not lower
        counts = starts + [left]
        while stalled < len(counts) - 1 and counts[-1 - stalled] >= counts[-2 - stalled]:
            stalled += 1
        assert said == (f"stopped: {left} of 12 trials left (retryable failures); no trial "
                        f"finished in the last {stalled} job(s); see sweep status, then "
                        "continue with: sbatch /s/slurm/sweep.sbatch")


def test_left_events_are_read_in_order_and_status_shows_why_the_chain_stopped(tmp_path,
                                                                              monkeypatch):
    (tmp_path / "slurm").mkdir()
    stop = ("stopped: 2 of 6 trials left (retryable failures); no trial finished in the last 2 "
            "job(s); see sweep status, then continue with: sbatch x")
    rows = [("7", "submitted", "", "by sweep slurm"), ("7", "started", "n1", "restart 0"),
            ("7", "left", "n1", "6 of 6"), ("8", "submitted", "n1", "continues job 7"),
            ("7", "ended", "n1", "2 of 6 trials left (retryable failures); continued by job 8"),
            ("8", "started", "n1", "restart 0"), ("8", "left", "n1", "2 of 6"),
            ("8", "left", "n1", "garbage"), ("8", "ended", "n1", stop),
            ("9", "started", "n1", "restart 0"), ("9", "left", "n1", "2 of 6")]
    (tmp_path / "slurm" / "jobs.tsv").write_text(
        "".join(f"{j}\t{e}\t2026-01-01T00:00:00Z\t{n}\t{d}\n" for j, e, n, d in rows))
    assert sl.left_at_starts(sl.read_jobs(str(tmp_path))) == [6, 2, 2]
    monkeypatch.setattr(sl, "queue_states", lambda ids: {})
    lines = sl.chain_status(str(tmp_path))[0]
    assert lines[2] == f"slurm job 8: ended 2026-01-01T00:00:00Z: {stop}"
    # a job whose last line is its count of trials left is named by the line before it
    assert lines[3].startswith("slurm job 9: started 2026-01-01T00:00:00Z on n1")


STUB_PYTHON = """#!/bin/bash
# the real interpreter, except the wait for Ray's nodes (there is no Ray here)
echo "python $*" >> "$STUB_LOG"
[ "$1 $2 $3" = "-m sweep.slurm wait-ray" ] && exit 0
# a helper that fails ($STUB_FAIL: left, next or limit) or takes two seconds ($STUB_SLOW)
[ "$1 $2 $3" = "-m sweep.slurm $STUB_FAIL" ] && exit 1
[ "$1 $2 $3" = "-m sweep.slurm $STUB_SLOW" ] && sleep 2
exec {python} "$@"
"""
STUB_SWEEP = """#!/bin/bash
# the driver: exits $STUB_DRIVER_RC; "wait": runs until SIGTERM, then exits 1 (stopped with
# trials left, as DispatchStopped); "wait0": the same, but exits 0 (its last trials finished)
echo "sweep $*" >> "$STUB_LOG"
# $STUB_CHECKPOINT: a training state the driver writes (a path under the sweep)
[ -n "$STUB_CHECKPOINT" ] && mkdir -p "$(dirname "$STUB_CHECKPOINT")" && touch "$STUB_CHECKPOINT"
case "$STUB_DRIVER_RC" in
  wait) trap 'echo "sweep got TERM" >> "$STUB_LOG"; exit 1' TERM;;
  wait0) trap 'echo "sweep got TERM" >> "$STUB_LOG"; exit 0' TERM;;
  *) exit "$STUB_DRIVER_RC";;
esac
while :; do sleep 0.1; done
"""
STUBS = {
    "python": STUB_PYTHON,
    "sweep": STUB_SWEEP,
    "sbatch": '#!/bin/bash\necho "sbatch $*" >> "$STUB_LOG"\necho "101;test"\n',
    "scancel": '#!/bin/bash\necho "scancel $*" >> "$STUB_LOG"\n',
    # the queue: the job ids in $STUB_QUEUE, one a line; a job's reason (-o %r): $STUB_REASON
    # (Slurm's: TimeLimit once the limit ended it; None after a scancel)
    "squeue": '#!/bin/bash\necho "squeue $*" >> "$STUB_LOG"\n'
              'case "$*" in *%r*) echo "$STUB_REASON"; exit 0;; esac\n'
              'printf "%s\\n" $STUB_QUEUE\n',
    "scontrol": '#!/bin/bash\necho node1\n',
    # a Ray step: runs until stop_ray ends it
    "srun": '#!/bin/bash\necho "srun pid $$" >> "$STUB_LOG"\nexec sleep 300\n',
}


def run_script(tmp_path: Path, kinds: dict[str, str], driver: str, earlier_left: list[int] = (),
               time_limit_signal: bool = False, sbatch_fails: bool = False,
               signals: list[tuple[str, int]] = (), sbatch: str | None = None,
               env_extra: dict[str, str] | None = None,
               ) -> tuple[int, list[list[str]], list[str]]:
    """The rendered batch script, run by bash as job 100 of a sweep whose results are
    ``kinds`` (make_results), with stub Slurm commands and a stub driver (``driver``: its exit
    code, or "wait"/"wait0": STUB_SWEEP); ``earlier_left``: the ``left`` counts of earlier jobs
    in the job list; ``time_limit_signal``: SIGUSR1 to the batch shell once the driver runs
    (what Slurm's ``--signal=B:USR1@S`` and ``scancel --batch --signal=USR1`` send);
    ``sbatch_fails``: sbatch exits 1; ``sbatch``: another stub sbatch; ``signals``: (a text,
    a signal): once the stubs' log holds the text, the signal to the batch shell, in order;
    ``env_extra``: the stubs' settings (STUB_FAIL, STUB_SLOW, STUB_QUEUE, STUB_CHECKPOINT,
    STUB_REASON).
    Returns (exit code, the job list's lines split, the
    stubs' log and the script's output)."""
    import signal

    d = tmp_path / "sweep"
    d.mkdir()
    make_results(d, kinds)
    (d / "slurm").mkdir()
    (d / "slurm" / "jobs.tsv").write_text("".join(
        f"{90 + i}\tleft\t2026-01-01T00:00:00Z\tnode1\t{n} of {len(kinds)}\n"
        for i, n in enumerate(earlier_left)))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    texts = {**STUBS, **({"sbatch": '#!/bin/bash\necho "sbatch $*" >> "$STUB_LOG"\nexit 1\n'}
                         if sbatch_fails else {}), **({"sbatch": sbatch} if sbatch else {})}
    for name, text in texts.items():
        (stubs / name).write_text(text.format(python=shlex.quote(sys.executable)))
        (stubs / name).chmod(0o755)
    script = d / "slurm" / "sweep.sbatch"
    script.write_text(batch_script(d, SlurmOptions(time="10"), ["progress=false"],
                                   bin_dir=stubs, workdir=tmp_path))
    log = tmp_path / "stub.log"
    log.touch()
    env = {**os.environ, "SLURM_JOB_ID": "100", "SLURM_JOB_NODELIST": "node1",
           "SLURM_CPUS_ON_NODE": "2", "SWEEP_SLURM_HEAD_IP": "127.0.0.1", "STUB_LOG": str(log),
           "STUB_DRIVER_RC": driver, "STUB_FAIL": "", "STUB_SLOW": "", "STUB_QUEUE": "",
           "STUB_CHECKPOINT": "", "STUB_REASON": "", **(env_extra or {})}
    proc = subprocess.Popen(["bash", str(script)], env=env, cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if time_limit_signal:
            signals = [("sweep resume", signal.SIGUSR1), *signals]
        for text, sig in signals:
            deadline = time.monotonic() + 60
            while text not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)  # (the command that logged the text is running)
            proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [line.split("\t") for line in (d / "slurm" / "jobs.tsv").read_text().splitlines()]
    assert all(len(e) == 5 for e in events), events
    calls = log.read_text().splitlines()
    steps = [int(c.split()[-1]) for c in calls if c.startswith("srun pid ")]
    assert len(steps) == 1, calls  # one node: the head's step, ended by the script
    with pytest.raises(ProcessLookupError):
        os.kill(steps[0], 0)
    return proc.returncode, events, calls + ["output: " + output]


def ended(events):
    return [e[4] for e in events if e[0] == "100" and e[1] == "ended"]


def test_script_ends_the_chain_when_nothing_is_left(tmp_path):
    rc, events, calls = run_script(tmp_path, {"a": "ok", "b": "final", "c": "ok"}, driver="0")
    assert rc == 0 and ended(events) == ["done: nothing left"], (events, calls)
    assert ["100", "left"] == events[1][:2] and events[1][4] == "0 of 3", events
    assert not any(c.startswith(("sbatch", "scancel")) for c in calls), calls
    resume = next(c for c in calls if c.startswith("sweep resume"))
    assert resume == f"sweep resume {tmp_path / 'sweep'} cluster.address=127.0.0.1:20300 " \
                     "cluster.fixed_nodes=true progress=false"


def test_script_continues_the_chain_while_retryable_failures_are_left(tmp_path):
    kinds = {"a": "ok", "b": "retryable", "c": "none", "d": "final"}
    rc, events, calls = run_script(tmp_path, kinds, driver="0", earlier_left=[4])
    # the driver "ran" (the stub wrote nothing): 2 of 4 left at the start and at the end, the
    # job before left 4: this job alone made no progress, fewer than STALLED_JOBS (2)
    assert sl.STALLED_JOBS == 2
    assert rc == 0, (events, calls)
    assert ended(events) == ["2 of 4 trials left (retryable failures); continued by job 101"]
    assert ["101", "submitted"] == [e[:2] for e in events if e[0] == "101"][0]
    sub = [c for c in calls if c.startswith("sbatch")]
    assert sub == [f"sbatch --parsable --dependency=afterany:100 "
                   f"{tmp_path / 'sweep' / 'slurm' / 'sweep.sbatch'}"], calls


def test_script_stops_the_chain_after_jobs_that_finish_nothing(tmp_path, monkeypatch):
    kinds = {"a": "ok", "b": "retryable", "c": "retryable"}
    rc, events, calls = run_script(tmp_path, kinds, driver="0", earlier_left=[3, 2])
    assert rc == 1, (events, calls)
    assert ended(events) == [
        "stopped: 2 of 3 trials left (retryable failures); no trial finished in the last 2 "
        f"job(s); see sweep status, then continue with: sbatch "
        f"{tmp_path / 'sweep' / 'slurm' / 'sweep.sbatch'}"], events
    assert not any(c.startswith("sbatch") for c in calls), calls
    monkeypatch.setattr(sl, "queue_states", lambda ids: {})
    line = sl.chain_status(str(tmp_path / "sweep"))[0][-1]
    assert line.startswith("slurm job 100: ") and "no trial finished in the last 2" in line


def test_script_on_the_time_limit_signal_submits_the_next_and_stops_the_driver(tmp_path):
    rc, events, calls = run_script(tmp_path, {"a": "ok", "b": "none"}, driver="wait",
                                   time_limit_signal=True)
    assert rc == 0, (events, calls)
    assert "sweep got TERM" in calls, calls
    assert [e[1] for e in events if e[0] == "100"] == ["started", "left", "stopping", "ended"]
    assert ended(events) == ["stopped before its time limit; 1 of 2 trials left; continued by "
                             "job 101"]
    assert sum(c.startswith("sbatch --parsable --dependency=afterany:100 ") for c in calls) == 1
    assert not any(c.startswith("python -m sweep.slurm next") for c in calls), calls
    assert any(c.startswith("python -m sweep.slurm limit") for c in calls), calls


def test_script_cancels_the_submitted_next_job_when_the_driver_finished_everything(tmp_path):
    # the signal came while the last trials ran; they finished within the grace: exit 0
    rc, events, calls = run_script(tmp_path, {"a": "ok"}, driver="wait0", time_limit_signal=True)
    assert rc == 0, (events, calls)
    assert ended(events) == ["done: nothing left"], (events, calls)
    assert "scancel 101" in calls, calls
    assert [e[1::3] for e in events if e[0] == "101"] == [
        ["submitted", "continues job 100"], ["cancelled", "nothing left after job 100"]]


@pytest.mark.parametrize("kind, action", [("ok", "done: nothing left"),
                                          ("retryable", "continued by job 101")])
def test_a_time_limit_signal_after_the_driver_ended_submits_nothing_itself(tmp_path, kind,
                                                                           action):
    """USR1 while the end step decides (the driver exited 0): the decision alone says what
    follows; nothing is submitted at the signal, and a "continue" submits one job."""
    import signal

    rc, events, calls = run_script(tmp_path, {"a": kind}, driver="0",
                                   signals=[("python -m sweep.slurm next", signal.SIGUSR1)],
                                   env_extra={"STUB_SLOW": "next"})
    assert rc == 0, (events, calls)
    assert ended(events)[0].endswith(action), (events, calls)
    assert not [e for e in events if e[1] == "stopping"], events
    submitted = sum(c.startswith("sbatch") for c in calls)
    assert submitted == (kind == "retryable"), calls
    assert not any(c.startswith("scancel") for c in calls), calls


def test_script_stops_with_its_reason_when_the_next_job_cannot_be_submitted(tmp_path):
    rc, events, calls = run_script(tmp_path, {"a": "retryable"}, driver="0", sbatch_fails=True)
    assert rc == 1, (events, calls)
    assert ended(events) == ["1 of 1 trials left (retryable failures); could not submit the "
                             "next job (sbatch failed); continue with: sbatch "
                             f"{tmp_path / 'sweep' / 'slurm' / 'sweep.sbatch'}"]


def test_a_cancel_while_the_end_is_decided_submits_nothing(tmp_path):
    # TERM (scancel) after the driver exited 0, while `next` decides "continue"
    import signal

    rc, events, calls = run_script(tmp_path, {"a": "retryable"}, driver="0",
                                   signals=[("python -m sweep.slurm next", signal.SIGTERM)],
                                   env_extra={"STUB_SLOW": "next"})
    assert ended(events) == ["cancelled"], (events, calls)
    assert not any(c.startswith("sbatch") for c in calls), calls
    assert [e[0] for e in events] == ["100"] * 3, events


def test_a_cancel_after_the_time_limit_keeps_the_job_submitted_at_the_signal(tmp_path):
    # Slurm itself sends TERM at the time limit: the job submitted at USR1 stays
    import signal

    rc, events, calls = run_script(tmp_path, {"a": "none"}, driver="wait",
                                   time_limit_signal=True, env_extra={"STUB_SLOW": "limit"},
                                   signals=[("python -m sweep.slurm limit", signal.SIGTERM)])
    assert ended(events) == ["cancelled; job 101, submitted at the time-limit signal, continues "
                             "the sweep (scancel 101 to end the chain)"], (events, calls)
    assert sum(c.startswith("sbatch") for c in calls) == 1 and "scancel 101" not in calls, calls


@pytest.mark.parametrize("reason, cancelled", [("TimeLimit", False), ("None", True),
                                              ("", True)])
def test_slurms_term_at_the_time_limit_is_not_a_cancel(tmp_path, reason, cancelled):
    """A TERM with no USR1 before it: when squeue gives the job's reason as TimeLimit it is
    Slurm's at the time limit (a limit shorter than --signal's lead, or a signal lost): the next
    job is submitted and the chain goes on. After a scancel the reason is None (Slurm also sets
    the end time to the cancel's time, so the end time cannot tell them apart); a squeue that
    answers nothing: a cancel, as before."""
    import signal

    rc, events, calls = run_script(tmp_path, {"a": "ok", "b": "none"}, driver="wait",
                                   signals=[("sweep resume", signal.SIGTERM)],
                                   env_extra={"STUB_REASON": reason})
    assert "sweep got TERM" in calls, calls
    submitted = sum(c.startswith("sbatch --parsable --dependency=afterany:100 ") for c in calls)
    if cancelled:
        assert ended(events) == ["cancelled"] and submitted == 0, (events, calls)
        return
    assert submitted == 1, calls
    stopping = [e[4] for e in events if e[0] == "100" and e[1] == "stopping"]
    assert stopping == ["time limit reached (TERM from Slurm, no time-limit signal before it)"]
    assert ended(events)[0].endswith("1 of 2 trials left; continued by job 101"), events
    assert rc == 0, (events, calls)


@pytest.mark.parametrize("left, starts, checkpoint_at, stalled_max, action", [
    (1, [(1, 100.0)], None, 2, "continue"),  # one job without progress
    (1, [(1, 100.0), (1, 200.0)], None, 2, "stop"),  # two: a trial longer than a job
    (1, [(1, 100.0), (1, 200.0)], 150.0, 2, "continue"),  # the job before wrote a checkpoint
    (1, [(1, 100.0), (1, 200.0)], 250.0, 2, "continue"),  # this job wrote one
    (1, [(1, 100.0), (1, 200.0)], 99.0, 2, "stop"),  # only before both jobs
    (1, [(1, 100.0), (1, 200.0)], 99.0, 3, "continue"),
    (1, [(3, 100.0), (1, 200.0)], None, 2, "continue"),  # the job before finished 2
    (1, [(1, 100.0), (1, None)], None, 2, "continue"),  # a start time unknown: progress
    (0, [(1, 100.0), (1, 200.0)], None, 1, "done"),  # nothing left: the next job is cancelled
    (2, [(2, 0.0), (2, 100.0), (2, 200.0)], 50.0, 2, "stop"),
])
def test_limit_step_stops_after_jobs_that_neither_finish_nor_checkpoint(
        left, starts, checkpoint_at, stalled_max, action):
    got, said = sl.limit_step(left, 4, starts, checkpoint_at, stalled_max, "/s/x.sbatch")
    # independently: count the jobs at the end without a lower count after them and with no
    # checkpoint at or after their start
    counts, stalled = [c for c, _ in starts] + [left], 0
    for k in range(len(starts), 0, -1):
        at = starts[k - 1][1]
        if (counts[k] < counts[k - 1] or at is None
                or (checkpoint_at is not None and checkpoint_at >= at)):
            break
        stalled += 1
    assert got == action == ("done" if not left else
                             "stop" if stalled >= stalled_max else "continue")
    if action == "done":
        assert said == "done: nothing left"
    elif action == "continue":
        assert said == f"{left} of 4 trials left"
    else:
        assert said.startswith(f"stopped at the time limit: {left} of 4 trials left; no trial "
                               f"finished and no checkpoint was written in the last {stalled} "
                               "job(s)") and said.endswith("continue with: sbatch /s/x.sbatch")
        assert "resources.trial_timeout" in said and "train.checkpoint_every" in said


def test_the_time_limit_path_stops_when_jobs_make_no_progress(tmp_path, monkeypatch):
    # the job before and this one: the same trial left, cut at the limit, no checkpoint
    rc, events, calls = run_script(tmp_path, {"a": "ok", "b": "none"}, driver="wait",
                                   time_limit_signal=True, earlier_left=[1])
    assert rc == 1, (events, calls)
    (reason,) = ended(events)
    assert reason.startswith("stopped at the time limit: 1 of 2 trials left; no trial finished "
                             "and no checkpoint was written in the last 2 job(s)"), events
    assert "scancel 101" in calls, calls
    assert [e[1::3] for e in events if e[0] == "101"] == [
        ["submitted", "continues job 100"], ["cancelled", "the chain stopped after job 100"]]
    monkeypatch.setattr(sl, "queue_states", lambda ids: {})
    line = next(x for x in sl.chain_status(str(tmp_path / "sweep"))[0]
                if x.startswith("slurm job 100: "))
    assert "stopped at the time limit" in line and "train.checkpoint_every" in line, line


def test_the_time_limit_path_goes_on_while_checkpoints_are_written(tmp_path):
    ckpt = tmp_path / "sweep" / "checkpoints" / "b.pt"
    rc, events, calls = run_script(tmp_path, {"a": "ok", "b": "none"}, driver="wait",
                                   time_limit_signal=True, earlier_left=[1, 1],
                                   env_extra={"STUB_CHECKPOINT": str(ckpt)})
    assert ckpt.exists() and rc == 0, (events, calls)
    assert ended(events) == ["stopped before its time limit; 1 of 2 trials left; continued by "
                             "job 101"], (events, calls)
    assert "scancel 101" not in calls, calls


def test_a_failed_decision_keeps_the_job_submitted_at_the_signal(tmp_path):
    # `next` fails after the time-limit signal submitted job 101: it stays and decides again
    rc, events, calls = run_script(tmp_path, {"a": "retryable"}, driver="wait0",
                                   time_limit_signal=True, env_extra={"STUB_FAIL": "next"})
    assert rc == 1, (events, calls)
    assert ended(events) == ["python -m sweep.slurm could not decide; job 101 (submitted at the "
                             "time-limit signal) continues the sweep"], (events, calls)
    assert not any(c.startswith("scancel") for c in calls), calls
    # without a job submitted, the chain stops with the way to go on
    (tmp_path / "b").mkdir()
    rc, events, calls = run_script(tmp_path / "b", {"a": "retryable"}, driver="0",
                                   env_extra={"STUB_FAIL": "next"})
    assert rc == 1 and ended(events) == [
        "stopped: python -m sweep.slurm could not decide; continue with: sbatch "
        f"{tmp_path / 'b' / 'sweep' / 'slurm' / 'sweep.sbatch'}"], (events, calls)


def test_a_second_submit_uses_a_job_sbatch_queued_before_it_failed(tmp_path):
    # sbatch prints an id but exits 1 (e.g. a timeout after Slurm accepted the job)
    flaky = '#!/bin/bash\necho "sbatch $*" >> "$STUB_LOG"\necho "4242;test"\nexit 1\n'
    rc, events, calls = run_script(tmp_path, {"a": "retryable", "b": "ok"}, driver="wait0",
                                   time_limit_signal=True, sbatch=flaky,
                                   env_extra={"STUB_QUEUE": "100 4242"})
    assert rc == 0, (events, calls)
    assert sum(c.startswith("sbatch") for c in calls) == 1, calls
    user = os.environ.get("USER") or getpass.getuser()
    assert [c for c in calls if re.fullmatch(
        rf"squeue --name=sweep-sweep-[0-9a-f]{{6}} --user={user} --states=PENDING -h -o %i",
        c)], calls
    assert ended(events) == ["1 of 2 trials left (retryable failures); continued by job 4242"]
    assert [e[1] for e in events if e[0] == "4242"] == ["submitted"], events
    # nothing queued: sbatch again
    (tmp_path / "b").mkdir()
    rc, events, calls = run_script(tmp_path / "b", {"a": "retryable", "b": "ok"},
                                   driver="wait0", time_limit_signal=True, sbatch=flaky,
                                   env_extra={"STUB_QUEUE": "100"})
    assert rc == 1 and sum(c.startswith("sbatch") for c in calls) == 2, calls
    assert "could not submit the next job (sbatch failed)" in ended(events)[0], events


# ---- a real chain of jobs
@pytest.fixture(scope="module")
def slurm_env():
    sys.path.insert(0, str(Path(__file__).parent))
    from slurm_cluster import Unavailable, slurm_cluster

    try:
        with slurm_cluster() as env:
            yield env
    except Unavailable as e:
        pytest.skip(str(e))


# 6 trials, one at a time (resources.max_in_flight=1), each a second or more. The test makes
# the first job's time-limit stop itself, at a moment it controls: once the first job wrote a
# result it sends the batch shell SIGUSR1 (`scancel --batch --signal=USR1`: the signal Slurm
# sends at --signal=B:USR1@S), so the chain's length does not depend on the machine's speed.
# After the signal the driver submits nothing new and its one running trial finishes (a trial
# over the 30 s grace is cut and goes on from its checkpoint in the next job): on any machine
# the first job writes some of the trials, the next job the rest. The real --signal (at 9 min)
# never comes first.
CHAIN = ["trials=6", "dataset.train_size=200", "dataset.test_size=80", "train.steps=1500",
         "train.early_stop=false", "train.checkpoint_every=500", "space.width=[16,32]",
         "space.depth=[2,3]", "space.batch_size=[32]", "figure=false",
         "resources.trials_per_task=1", "resources.max_in_flight=1", "save_weights=false"]
CHAIN_TIMEOUT_S = 900  # about a minute on two quiet cores


def submit_chain(slurm_env, out: Path) -> tuple[dict, str]:
    """`sweep slurm` of CHAIN to ``out`` (a 10-minute limit, its signal 60 s before) on the
    test cluster: (the environment its commands run in, the first job's id)."""
    env = {**slurm_env, "SWEEP_SLURM_HEAD_IP": "127.0.0.1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "sweep.cli", "slurm", *CHAIN, f"out={out}",
                        "--time", "10", "--signal-before", "60"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return env, re.search(r"submitted SLURM job (\d+)", r.stdout).group(1)


def squeue_empty(env) -> bool:
    q = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True,
                       timeout=30)
    return q.returncode == 0 and not q.stdout.strip()


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")  # (together where xdist keeps the group; apart, each
# worker starts a cluster of its own, whose job ids and so Ray ports differ: slurm_cluster.py)
def test_a_sweep_runs_as_a_chain_of_jobs_each_trial_once(slurm_env, tmp_path, capsys,
                                                          monkeypatch):
    from analysis import load_results
    from workers.results.index import read_journal
    from workers.results.layout import JOURNAL, JOURNAL_SUFFIX, PLAN_FILE

    import pyarrow.parquet as pq

    out = tmp_path / "sweep"
    env, first = submit_chain(slurm_env, out)
    assert "#SBATCH --signal=B:USR1@60" in (out / "slurm" / "sweep.sbatch").read_text()
    jobs = out / "slurm" / "jobs.tsv"

    def logs() -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted((out / "slurm").glob("*.out")))

    def written() -> int:
        return len(list((out / "trials").glob("*.parquet")))

    deadline = time.monotonic() + CHAIN_TIMEOUT_S
    while written() == 0:  # the first job's driver wrote its first result
        if time.monotonic() > deadline or squeue_empty(env):
            pytest.fail(f"no result from the first job:\n{jobs.read_text()}\n{logs()}")
        time.sleep(0.2)
    at_signal = written()
    sig = subprocess.run(["scancel", "--batch", "--signal=USR1", first], env=env,
                         capture_output=True, text=True, timeout=30)
    assert sig.returncode == 0, sig.stderr
    assert at_signal < 6, "the first job wrote every result before the signal: longer trials"
    while not squeue_empty(env):
        if time.monotonic() > deadline:
            pytest.fail(f"the chain did not end in {CHAIN_TIMEOUT_S} s:\n{jobs.read_text()}\n"
                        f"{logs()}")
        time.sleep(1)
    events = [line.split("\t") for line in jobs.read_text().splitlines()]
    started = [e[0] for e in events if e[1] == "started"]
    text = logs()
    assert started[0] == first and len(set(started)) >= 2, (events, text)
    assert [e[0] for e in events if e[1] == "stopping"] == [first], events  # the signal's stop
    ended = [e for e in events if e[1] == "ended"]
    assert len(ended) == len(started) and ended[-1][4] == "done: nothing left", (events, text)
    assert all("failed" not in e[4] for e in ended), (events, text)
    # the first job wrote some trials, not all: the second started with the rest left
    left = [(e[0], e[4]) for e in events if e[1] == "left"]
    assert left[0] == (first, "6 of 6"), events
    k = int(left[1][1].split()[0])
    assert left[1][0] == started[1] and 0 < k < 6 and left[1][1] == f"{k} of 6", events
    assert ended[0][:2] == [first, "ended"] and ended[0][4] == (
        f"stopped before its time limit; {k} of 6 trials left; continued by job "
        f"{started[1]}"), events
    # every planned trial written exactly once
    planned = pq.read_table(out / PLAN_FILE, columns=["trial_id"]).column("trial_id").to_pylist()
    files = sorted(p.stem for p in (out / "trials").glob("*.parquet"))
    assert files == sorted(planned) and len(planned) == 6
    assert not any((out / "trials" / d).exists() and any((out / "trials" / d).iterdir())
                   for d in ("invalid", "retried"))
    df = load_results(out)
    assert len(df) == 6 and sorted(df.trial_id) == sorted(planned)
    assert (df.status == "ok").all(), df[["status", "error"]]
    journal = read_journal(out)  # what the drivers journaled is each result as it is on disk
    assert journal and set(journal) <= set(planned)
    for tid, (_, size, mtime_ns) in journal.items():
        st = (out / "trials" / f"{tid}.parquet").stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns), tid
    # each job's driver journals what it wrote: every trial once, by the two jobs together
    sessions = [[line.split("\t")[0] for line in p.read_text().splitlines()]
                for p in sorted((out / JOURNAL).glob(f"*{JOURNAL_SUFFIX}"))]
    sessions = [ids for ids in sessions if ids]
    assert sorted(t for ids in sessions for t in ids) == sorted(planned), sessions
    assert len(sessions) == 2 and len(sessions[1]) == k, (sessions, events)
    from sweep.cli import main  # `sweep status`, in this process, asking the test cluster

    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
    capsys.readouterr()
    rc, stdout = main(["status", str(out)]), capsys.readouterr().out
    assert rc == 0 and "progress 6/6" in stdout, stdout
    for jid in set(started):
        assert f"slurm job {jid}:" in stdout, stdout
    assert os.path.exists(out / "slurm" / "sweep.sbatch")


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_a_scancel_ends_the_chain_on_a_real_cluster(slurm_env, tmp_path):
    """`scancel JOB` (TERM to the batch shell; Slurm sets the job's end time to the cancel's
    time, its reason stays None): the job records "cancelled" at once, no next job is
    submitted, and the trials it finished stay."""
    out = tmp_path / "sweep"
    env, first = submit_chain(slurm_env, out)
    jobs = out / "slurm" / "jobs.tsv"
    deadline = time.monotonic() + CHAIN_TIMEOUT_S
    while not list((out / "trials").glob("*.parquet")):  # the driver runs
        if time.monotonic() > deadline or squeue_empty(env):
            pytest.fail(f"no result from the job:\n{jobs.read_text()}")
        time.sleep(0.2)
    c = subprocess.run(["scancel", first], env=env, capture_output=True, text=True, timeout=30)
    assert c.returncode == 0, c.stderr
    while not squeue_empty(env):
        if time.monotonic() > deadline:
            pytest.fail(f"the job did not end:\n{jobs.read_text()}")
        time.sleep(0.5)
    time.sleep(2)  # (a job submitted in the last moment would be in the queue by now)
    assert squeue_empty(env)
    events = [line.split("\t") for line in jobs.read_text().splitlines()]
    assert {e[0] for e in events} == {first}, events  # no job submitted after it
    # recorded at the TERM (this cluster's KillWait=5 kills the job before its end step)
    assert [e[4] for e in events if e[1] == "stopping"] == ["cancelled (TERM: scancel)"], events
    assert [e[4] for e in events if e[1] == "ended"] in ([], ["cancelled"]), events
    assert list((out / "trials").glob("*.parquet"))


@pytest.mark.parametrize("tools, words", [
    ({"sinfo": "echo 'sinfo: fatal: Could not establish a configuration source' >&2; exit 1"},
     ("no sbatch command",)),
    ({"sbatch": "exit 0",
      "sinfo": "echo 'sinfo: fatal: Could not establish a configuration source' >&2; exit 1"},
     ("SLURM cannot be reached", "Could not establish a configuration source")),
])
def test_a_machine_that_cannot_submit_is_one_line_before_anything_is_written(
        tmp_path, monkeypatch, capsys, tools, words):
    """sbatch missing, or SLURM's commands without a configuration or controller (not a login
    node): one line, exit 2, and no plan written (before, the plan was written and sbatch's own
    error came after it, exit 1)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin/python-none")
    monkeypatch.setattr(sl.shutil, "which",
                        lambda cmd, path=None: str(bin_dir / cmd) if (bin_dir / cmd).exists()
                        else None)
    out = tmp_path / "s"
    assert main(["slurm", *TINY, f"out={out}", "--time", "1:00:00"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err
    assert "login node" in err and not out.exists()


def test_newest_checkpoint_is_a_trials_training_state(tmp_path):
    """The time-limit bound's 'a checkpoint was written': <trial>.pt files only; the fallback
    weights (written again by every restarted attempt) and a save's leftovers do not count."""
    from workers.results.layout import CHECKPOINTS, checkpoint_file, fallback_file

    (tmp_path / CHECKPOINTS).mkdir()
    assert sl.newest_checkpoint(tmp_path) is None
    for rel, t in ((checkpoint_file("a"), 100.0), (checkpoint_file("b"), 200.0),
                   (fallback_file("b"), 900.0), (f"{CHECKPOINTS}/c.pt.tmp-1234", 950.0)):
        (tmp_path / rel).write_bytes(b"x")
        os.utime(tmp_path / rel, (t, t))
    assert sl.newest_checkpoint(tmp_path) == 200.0


def test_a_long_trial_that_checkpointed_and_then_failed_retryably_goes_on(tmp_path):
    """The driver exits 0 with a retryable failure left, after jobs that finished no trial: the
    chain stops (next_step), unless a checkpoint was written in those jobs (a long trial that
    spanned time-limited jobs and then failed retryably goes on)."""
    ckpt = tmp_path / "one" / "sweep" / "checkpoints" / "a.pt"
    (tmp_path / "one").mkdir()
    rc, events, calls = run_script(tmp_path / "one", {"a": "retryable"}, driver="0",
                                   earlier_left=[1, 1], env_extra={"STUB_CHECKPOINT": str(ckpt)})
    assert ckpt.exists() and rc == 0, (events, calls)
    assert ended(events) == ["1 of 1 trials left (retryable failures); continued by job 101"], \
        (events, calls)
    (tmp_path / "two").mkdir()  # the same without a checkpoint: stopped
    rc, events, calls = run_script(tmp_path / "two", {"a": "retryable"}, driver="0",
                                   earlier_left=[1, 1])
    assert rc == 1 and ended(events)[0].startswith("stopped: 1 of 1 trials left"), events


def test_two_sweeps_of_one_directory_name_have_chains_of_their_own_names(tmp_path):
    """`scancel --name=sweep-sweep`, which `sweep status` printed for a/sweep, also cancelled
    b/sweep's chain (a helper's audit on real Slurm). The names now differ by 6 hex digits of
    the whole path; a chain submitted before keeps its script's name, which status names."""
    a, b = sl.job_name(tmp_path / "a" / "sweep"), sl.job_name(tmp_path / "b" / "sweep")
    assert a != b and a.startswith("sweep-sweep-") and b.startswith("sweep-sweep-")
    assert len(sl.job_name(tmp_path / ("x" * 200))) <= 64
    old = tmp_path / "old"
    (old / "slurm").mkdir(parents=True)
    (old / "slurm" / "sweep.sbatch").write_text(
        "#!/bin/bash\nJOB_NAME=sweep-old  # the chain's jobs' name\n")
    assert sl.chain_name(old) == "sweep-old"
    assert sl.chain_name(tmp_path / "a" / "sweep") == sl.job_name(str(tmp_path / "a" / "sweep"))


def test_a_second_sweep_slurm_while_the_chain_is_queued_is_refused(tmp_path, monkeypatch,
                                                                   capsys):
    """Running `sweep slurm` again while the first job waits in the queue submitted a second
    chain of the same sweep (a helper on real Slurm): now one line, exit 2, naming the queued
    job and the cancel command; once the queue no longer holds it, a new chain is submitted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {"sbatch": 'echo "77;test"', "sinfo": "exit 0",
             "squeue": 'case "$*" in *-j*) [ -e "$QUEUED" ] && echo "77 PENDING";; esac; exit 0'}
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    flag = tmp_path / "queued"
    monkeypatch.setenv("QUEUED", str(flag))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sl.shutil, "which",
                        lambda cmd, path=None: str(bin_dir / cmd) if (bin_dir / cmd).exists()
                        else None)
    out = tmp_path / "s"
    argv = ["slurm", *TINY, f"out={out}", "--time", "1:00:00"]
    assert main(argv) == 0
    flag.touch()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has a chain of SLURM jobs in the queue (job 77)" in err, err
    assert f"scancel --name={sl.job_name(out)}" in err, err
    flag.unlink()
    assert main(argv) == 0  # (the first job gone from the queue)
