"""``statistics_table(processes=None)`` (as ``sweep report`` runs it) starts one process per CPU
this process may use, not per core of the machine: a SLURM job's cpuset or ``taskset`` (the
affinity mask) and a cgroup v2 CPU quota (a Kubernetes pod, ``docker --cpus``) bound it."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, cap", [("max 100000\n", None), ("150000 100000\n", 2),
                                       ("50000 100000\n", 1), ("400000 100000", 4),
                                       ("", None), ("garbage here\n", None)])
def test_a_cgroup_quota_caps_the_cores(tmp_path, text, cap):
    from analysis.stats import usable_cores

    f = tmp_path / "cpu.max"
    f.write_text(text)
    mask = len(os.sched_getaffinity(0))
    assert usable_cores(f) == (mask if cap is None else min(mask, cap))
    assert usable_cores(tmp_path / "absent") == mask


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
