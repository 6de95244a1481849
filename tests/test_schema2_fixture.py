"""A sweep directory written by the schema-2 release (tests/fixtures/schema2_sweep, made by
tests/fixtures/make_schema2_sweep.py and never regenerated) keeps working with this code: it
loads, its status and report work, its weights load, and `sweep resume` runs only the trial
that never ran, leaving every finished result file as it was."""

import shutil
from pathlib import Path

import pytest

from analysis import load_points, load_results
from sweep.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "schema2_sweep"


@pytest.fixture
def old_sweep(tmp_path):
    d = tmp_path / "schema2"
    shutil.copytree(FIXTURE, d)
    return d


def _stamps(d):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (d / "trials").glob("*.parquet")}


def test_an_old_sweep_loads_and_reports(old_sweep, capsys):
    df = load_results(old_sweep)
    assert len(df) == 3 and set(df.status) == {"ok"} and (df.schema_version == 2).all()
    assert df.loc[df.optimizer == "lbfgs", "batch_size"].isna().all()
    assert len(load_points(old_sweep)) > 0
    assert main(["status", str(old_sweep)]) == 0
    out = capsys.readouterr().out
    assert "4 trials planned" in out and "pending" in out and "driver: none running" in out
    assert main(["report", str(old_sweep), "--train-acc", "0", "--bootstrap", "0"]) == 0
    assert (old_sweep / "report" / "report.html").is_file()
    from workers.models import load_model

    assert load_model(str(old_sweep), df.trial_id.iloc[0]) is not None


@pytest.mark.slow
def test_an_old_sweep_resumes_without_rerunning_finished_trials(ray_local, old_sweep):
    before = _stamps(old_sweep)
    assert main(["resume", str(old_sweep), "progress=false", "figure=false"]) == 0
    after = _stamps(old_sweep)
    assert len(after) == 4 and {k: after[k] for k in before} == before
    assert len(load_results(old_sweep)) == 4


@pytest.mark.slow
def test_an_old_sweep_gets_a_new_measure_from_its_weights(ray_local, old_sweep):
    """Measures are added to a schema-2 sweep (version-1 trial ids, measure columns in its
    result files) without touching its result files; its built-in columns stay."""
    import math

    import numpy as np
    from safetensors.numpy import load_file

    lab = str(Path(__file__).parent / "fixtures" / "lab_measures.py")
    before = load_results(old_sweep)
    stamps = _stamps(old_sweep)
    assert main(["measure", str(old_sweep), "measures=[weight_l2]",
                 f"measure_modules=[{lab}]", "progress=false"]) == 0
    assert _stamps(old_sweep) == stamps
    df = load_results(old_sweep)
    for tid, v in zip(df.trial_id, df.weight_l2):
        w = load_file(str(old_sweep / "weights" / f"{tid}.safetensors"))
        assert v == pytest.approx(math.sqrt(sum(float((a.astype(np.float64) ** 2).sum())
                                                for a in w.values())), rel=1e-12)
    assert df.jacobian_norm_test.equals(before.jacobian_norm_test)
