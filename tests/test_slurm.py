"""``sweep slurm``: the batch script (fast, no daemons) and a real chain of SLURM jobs on a
one-node cluster on 127.0.0.1 (slow: tests/slurm_cluster.py starts munged, slurmctld, slurmd)."""

from __future__ import annotations

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
                 "--job-name=sweep-my_sweep", "--open-mode=append"):
        assert want in lines, (want, lines)
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
                     "progress=false", "resources.cpus_per_trial=2"]
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
    lines = sl.status_lines(str(tmp_path))
    assert lines[0].startswith("slurm: 2 job(s)") and "scancel --name=sweep-" in lines[0]
    assert "slurm job 41: ended" in lines[1] and "continued by job 42" in lines[1]
    assert lines[2].startswith("slurm job 42: running on n2")
    assert sl.status_lines(str(tmp_path / "none")) == []


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


# 12 trials of ~10 s each on a free core: more than one job's window (about 35 s of driver
# time before the signal with --time 2 and --signal-before 60, then 30 s for running trials),
# less than two. Checkpoints every 2000 steps: on a busy machine a trial cut by the signal
# goes on from there in the next job (each job makes progress, as a long sweep's jobs do).
CHAIN = ["trials=12", "dataset.train_size=200", "dataset.test_size=80", "train.steps=8000",
         "train.early_stop=false", "train.checkpoint_every=2000", "space.width=[16,32]",
         "space.depth=[2,3]", "space.batch_size=[32]", "figure=false",
         "resources.trials_per_task=1", "save_weights=false"]
CHAIN_TIMEOUT_S = 1200  # about 3 minutes on two free cores


@pytest.mark.slow
@pytest.mark.long  # (the chain's length depends on the machine's speed: on a quiet CI machine
# the sweep finished in its first job and the "at least 2 jobs" check failed; run with -m long)
def test_a_sweep_runs_as_a_chain_of_jobs_each_trial_once(slurm_env, tmp_path):
    from analysis import load_results
    from workers.results.index import read_journal
    from workers.results.layout import PLAN_FILE

    import pyarrow.parquet as pq

    out = tmp_path / "sweep"
    env = {**slurm_env, "SWEEP_SLURM_HEAD_IP": "127.0.0.1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "sweep.cli", "slurm", *CHAIN, f"out={out}",
                        "--time", "2", "--signal-before", "60"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    first = re.search(r"submitted SLURM job (\d+)", r.stdout).group(1)
    jobs = out / "slurm" / "jobs.tsv"
    deadline = time.monotonic() + CHAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True,
                           text=True, timeout=30)
        if q.returncode == 0 and not q.stdout.strip():
            break
        time.sleep(3)
    else:
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((out / "slurm").glob("*.out")))
        pytest.fail(f"the chain did not end in {CHAIN_TIMEOUT_S} s:\n{jobs.read_text()}\n{logs}")
    events = [line.split("\t") for line in jobs.read_text().splitlines()]
    started = [e[0] for e in events if e[1] == "started"]
    logs = "\n".join(p.read_text()[-3000:] for p in sorted((out / "slurm").glob("*.out")))
    assert started[0] == first and len(set(started)) >= 2, (events, logs)
    assert any(e[1] == "stopping" for e in events), events  # the signal cut a job
    ended = [e for e in events if e[1] == "ended"]
    assert len(ended) == len(started) and ended[-1][4] == "done: nothing left", (events, logs)
    assert all("failed" not in e[4] for e in ended), (events, logs)
    # every planned trial written exactly once
    planned = pq.read_table(out / PLAN_FILE, columns=["trial_id"]).column("trial_id").to_pylist()
    files = sorted(p.stem for p in (out / "trials").glob("*.parquet"))
    assert files == sorted(planned) and len(planned) == 12
    assert not any((out / "trials" / d).exists() and any((out / "trials" / d).iterdir())
                   for d in ("invalid", "retried"))
    df = load_results(out)
    assert len(df) == 12 and sorted(df.trial_id) == sorted(planned)
    assert (df.status == "ok").all(), df[["status", "error"]]
    journal = read_journal(out)  # what the drivers journaled is each result as it is on disk
    assert journal and set(journal) <= set(planned)
    for tid, (_, size, mtime_ns) in journal.items():
        st = (out / "trials" / f"{tid}.parquet").stat()
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns), tid
    status = subprocess.run([sys.executable, "-m", "sweep.cli", "status", str(out)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "progress 12/12" in status.stdout, status
    for jid in set(started):
        assert f"slurm job {jid}:" in status.stdout, status.stdout
    assert os.path.exists(out / "slurm" / "sweep.sbatch")
