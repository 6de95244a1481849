"""The measure registry, the trial identity without measurement settings, the measures table
and `sweep measure` (end-to-end tests marked slow: they start Ray)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sweep.config import compose
from sweep.plan import plan_trials
from workers.measures import REGISTRY, evaluate, evaluate_outcomes, MeasureInputs, register
from workers.models import build_mlp
from workers.results.spec import DataSpec, MetricSpec, TrainSpec, TrialSpec

LAB = str(Path(__file__).parent / "fixtures" / "lab_measures.py")
DEMO = ["experiment=demo", "trials=30"]


# --- identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    "metrics.transitions_points=50", "metrics.jacobian_points=10", "metrics.transitions_k=128",
    "metrics.ellipse_k=16", "metrics.boundary_grid=8", "measures=[jacobian_norm_test]",
    f"measure_modules=[{LAB}]", "measure_settings.sharpness.points=50",
    "measure_settings.pacbayes.samples=5"])
def test_measurement_settings_leave_every_trial_id_unchanged(change):
    base = compose(DEMO)
    other = compose(DEMO + [change])
    assert [s.trial_id for s in plan_trials(base)] == [s.trial_id for s in plan_trials(other)]
    assert base.identity_hash() == other.identity_hash()


@pytest.mark.parametrize("change,which", [
    ("train.steps=1000", "all"), ("train.early_stop=false", "all"),
    ("train.check_every=50", "all"), ("dataset.train_size=500", "all"),
    ("dataset.seed=3", "all"), ("dataset.test_size=100", "all"),
    ("train.lr_decay=0.5", "minibatch"), ("train.lr_decay_epochs=100", "minibatch"),
    ("train.lbfgs.history_size=10", "lbfgs"), ("train.lbfgs.lr=0.5", "lbfgs"),
    ("train.lbfgs.max_iter=100", "lbfgs"), ("train.lbfgs.tolerance_grad=1e-5", "lbfgs")])
def test_training_settings_change_exactly_the_affected_ids(change, which):
    """The plan draws the same configurations; a setting changes the ids of the trials it
    applies to and no other (no L-BFGS setting in a mini-batch trial's identity, no lr decay
    in an L-BFGS trial's)."""
    a, b = plan_trials(compose(DEMO)), plan_trials(compose(DEMO + [change]))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        applies = which == "all" or (which == "lbfgs") == (x.optimizer == "lbfgs")
        assert (x.trial_id != y.trial_id) == applies, (change, x.optimizer)


def test_identity_is_what_determines_the_weights():
    s = TrialSpec(DataSpec("digits"), 8, 2, "relu", "lbfgs", 1.0, None, 1.0, 1)
    ident = json.loads(s.canonical())
    assert "metrics" not in ident and "lr_decay" not in ident["train"]
    assert ident["train"]["lbfgs_history"] == 100 and ident["_version"] == 2
    m = TrialSpec(DataSpec("digits"), 8, 2, "relu", "sgd", 0.01, 32, 1.0, 1)
    assert not any(k.startswith("lbfgs") for k in json.loads(m.canonical())["train"])
    # measurement settings: same id, equal specs; back from JSON: the same id
    t = TrialSpec(DataSpec("digits"), 8, 2, "relu", "sgd", 0.01, 32, 1.0, 1,
                  metrics=MetricSpec(transitions_points=0, measures=("jacobian_norm_test",)))
    assert t.trial_id == m.trial_id and t == m
    assert TrialSpec.from_json(m.canonical()).trial_id == m.trial_id


def test_a_version_1_plan_keeps_its_ids():
    """Version 1 hashed every field, measurement settings included (the old code, spelled
    out here): its text read back gives the id it was planned under."""
    import hashlib

    old = {"data": {"name": "digits", "train_size": 200, "test_size": None,
                    "random_labels": False, "augment": False, "seed": 0},
           "width": 8, "depth": 2, "activation": "relu", "optimizer": "sgd", "lr": 0.01,
           "batch_size": 32, "init_scale": 1.0, "seed": 1,
           "train": {"steps": 2000, "early_stop": True, "check_every": 100,
                     "lr_decay_epochs": 500, "lr_decay": 0.1, "lbfgs_history": 100,
                     "lbfgs_tolerance_grad": 1e-7, "lbfgs_tolerance_change": 1e-9,
                     "lbfgs_max_iter": 2684},
           "metrics": {"jacobian_points": None, "transitions_points": 50, "transitions_k": 4096,
                       "ellipse_k": 0, "boundary_grid": 0, "boundary_extent": 1.25},
           "_version": 1}
    text = json.dumps(old, sort_keys=True, separators=(",", ":"))
    want = hashlib.sha256(text.encode()).hexdigest()[:16]
    spec = TrialSpec.from_json(text)
    assert spec.trial_id == want and spec.metrics.transitions_points == 50
    assert spec.metrics.measure_settings() == {"transitions_test": {"points": 50}}
    assert spec.canonical_v1() == text
    # carrying today's measurement settings keeps the old id
    assert TrialSpec.from_json(text, MetricSpec(transitions_points=7)).trial_id == want


# --- registry ---------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry():
    """The built-in measures only, for the test; the registry as it was afterwards."""
    saved = dict(REGISTRY)
    for name, m in saved.items():
        if m.fn.__module__ != "workers.measures.builtin":
            del REGISTRY[name]
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    model = build_mlp(12, 16, 3, 4, "relu", 1.0, seed).eval()
    x = torch.randn(30, 12)
    return model, x, torch.randint(0, 4, (30,))


def test_a_registered_measure_runs_and_equals_the_slow_computation(scratch_registry):
    @register("sum_abs", source="test", needs=("model",), settings={"power": 1})
    def sum_abs(inputs, power=1):
        return float(sum((p.detach().double().abs() ** power).sum()
                         for p in inputs.model.parameters()))

    model, x, y = _model_and_data()
    got = evaluate(model, ["sum_abs", "jacobian_norm_test"], x_test=x,
                   settings={"sum_abs": {"power": 2}})
    weights = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    assert got["sum_abs"] == pytest.approx(float((weights.astype(np.float64) ** 2).sum()))
    # the Jacobian norm of the softmax output, by autograd one point at a time (float64)
    m64 = build_mlp(12, 16, 3, 4, "relu", 1.0, 0).double().eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    norms = [torch.linalg.norm(torch.autograd.functional.jacobian(
        lambda z: torch.softmax(m64(z[None]), -1)[0], xi.double())).item() for xi in x]
    assert got["jacobian_norm_test"] == pytest.approx(float(np.mean(norms)), rel=1e-5)


def test_bad_declarations_and_names_are_refused(scratch_registry):
    with pytest.raises(ValueError, match="needs"):
        register("m1", source="s", needs=("labels",))(lambda i: 0.0)
    with pytest.raises(ValueError, match="identifier"):
        register("my-measure", source="s")(lambda i: 0.0)
    with pytest.raises(ValueError, match="already registered"):
        register("jacobian_norm_test", source="s")(lambda i: 0.0)
    with pytest.raises(ValueError, match="version"):
        register("m2", source="s", version=0)(lambda i: 0.0)
    # a default before the `*`: no setting (its values were stored with none and kept when the
    # default changed; a new user's finding), refused naming the keyword-only form
    with pytest.raises(ValueError, match=r"'points' has a default but is not keyword-only.*"
                                         r"fn\(inputs, \*, points=default"):
        register("m3", source="s")(lambda i, points=200: 0.0)
    assert "m3" not in REGISTRY
    register("m4", source="s")(lambda i, *, points=200: 0.0)
    assert REGISTRY["m4"].settings == {"points": 200}
    model, x, y = _model_and_data()
    with pytest.raises(ValueError, match="unknown"):
        evaluate(model, ["no_such_measure"], x_test=x)
    with pytest.raises(ValueError, match="settings"):
        evaluate(model, ["jacobian_norm_test"], x_test=x, settings={"jacobian_norm_test": {"k": 1}})


def test_a_failing_measure_is_recorded_and_the_others_run(scratch_registry):
    @register("boom", source="test")
    def boom(inputs):
        raise RuntimeError("no convergence")

    model, x, y = _model_and_data()
    out = evaluate_outcomes(MeasureInputs(model, x_test=x), ["boom", "jacobian_norm_test",
                                                             "jacobian_norm_train"])
    assert out["boom"].value is None and "RuntimeError: no convergence" in out["boom"].error
    assert out["jacobian_norm_train"].value is None and "train_inputs" in out["jacobian_norm_train"].error
    assert out["jacobian_norm_test"].error is None and out["jacobian_norm_test"].value > 0
    assert math.isnan(evaluate(model, ["boom"], x_test=x)["boom"])


def test_a_trial_stays_ok_when_a_measure_raises(tmp_path, scratch_registry):
    from analysis import load_measures, load_results
    from workers.results.spec import RunContext
    from workers.trial import run_trial

    @register("boom", source="test")
    def boom(inputs):
        raise RuntimeError("no convergence")

    spec = TrialSpec(DataSpec("digits", train_size=100, test_size=40), 8, 2, "relu", "sgd",
                     0.01, 32, 1.0, 1, train=TrainSpec(steps=20),
                     metrics=MetricSpec(measures=("boom", "jacobian_norm_test")))
    row = run_trial(spec, RunContext(str(tmp_path)))
    assert row["status"] == "ok"
    long = load_measures(tmp_path)
    assert set(long.measure) == {"boom", "jacobian_norm_test"}
    b = long[long.measure == "boom"].iloc[0]
    assert b.value is None or math.isnan(b.value)
    assert "no convergence" in b.error and b.version == 1 and b.seconds >= 0
    df = load_results(tmp_path)
    assert math.isnan(df.boom.iloc[0]) and df.jacobian_norm_test.iloc[0] > 0
    assert math.isnan(df.transitions_test.iloc[0])  # not asked for: never evaluated
    # stored with the Jacobian per point, as the record's points are
    pts = load_measures(tmp_path, ["jacobian_norm_test"], points=True).points.iloc[0]
    assert len(pts) == 40 and {p["split"] for p in pts} == {"test"}


def test_readers_accept_measure_files_without_newer_columns(tmp_path):
    """A value file written before a column existed (here: no `info`, no `points`) reads with
    null there; a file of a newer format is refused naming its version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from analysis import load_measures
    from workers.results.measure_table import MEASURES

    (tmp_path / MEASURES).mkdir()
    old = pa.table({"trial_id": ["t1"], "measure": ["m"], "version": [1], "settings": ["{}"],
                    "value": [2.5], "seconds": [0.1], "error": [None], "hostname": ["h"],
                    "created": [1.0]})
    pq.write_table(old, tmp_path / MEASURES / "t1.m.v1.abc.parquet")
    (tmp_path / MEASURES / "t2.m.v1.abc.parquet").write_bytes(b"PAR1 truncated")
    with pytest.warns(UserWarning, match="skipping"):
        got = load_measures(tmp_path)
    assert len(got) == 1 and got.value.iloc[0] == 2.5 and got["info"].isna().all()
    newer = old.replace_schema_metadata({b"sensitivity_sweep_measure_format": b"9"})
    pq.write_table(newer, tmp_path / MEASURES / "t3.m.v1.abc.parquet")
    from workers.results.measure_table import MeasureFormatError

    with pytest.raises(MeasureFormatError, match="format 9"):
        load_measures(tmp_path)


# --- sweep measure, end to end (Ray) ------------------------------------------------------------

TINY = ["experiment=demo", "trials=5", "dataset.train_size=200", "dataset.test_size=60",
        "train.steps=100", "train.check_every=50", "space.width=[16]", "space.depth=[2]",
        "metrics.transitions_points=5", "progress=false", "figure=false"]


def _stamps(d, sub="trials"):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (d / sub).glob("*.parquet")}


def _l2_from_weights(d, tid):
    from safetensors.numpy import load_file

    w = load_file(str(d / "weights" / f"{tid}.safetensors"))
    return math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in w.values()))


@pytest.mark.slow
def test_sweep_measure_adds_a_column_and_touches_no_trial(ray_local, tmp_path, capsys):
    from analysis import load_results
    from sweep.cli import main
    from sweep.driver import launch

    out = tmp_path / "sweep"
    launch(compose(TINY + [f"out={out}", "measures=[jacobian_norm_test]"]))
    assert len(list((out / "weights").glob("*.safetensors"))) == 5  # save_weights: automatic
    trials = _stamps(out)
    assert main(["measure", str(out), "measures=[weight_l2,jacobian_norm_test]",
                 f"measure_modules=[{LAB}]"]) == 0  # the README's module (test below)
    assert _stamps(out) == trials
    df = load_results(out)
    assert df.weight_l2.notna().all()
    for tid, v in zip(df.trial_id, df.weight_l2):
        assert v == pytest.approx(_l2_from_weights(out, tid), rel=1e-12)
    values = _stamps(out, "measures")
    capsys.readouterr()
    assert main(["measure", str(out), "measures=[weight_l2,jacobian_norm_test]",
                 f"measure_modules=[{LAB}]"]) == 0
    assert "nothing to evaluate" in capsys.readouterr().err
    assert _stamps(out, "measures") == values and _stamps(out) == trials
    # settings changed: a new value beside the old one, which stays; load_results shows the
    # values of the settings last asked for, with the record's columns saying how
    all_points = load_results(out).set_index("trial_id").jacobian_norm_test
    assert main(["measure", str(out), "metrics.jacobian_points=10"]) == 0
    assert len(_stamps(out, "measures")) == len(values) + 5 and _stamps(out) == trials
    ten = load_results(out).set_index("trial_id")
    assert (ten.jacobian_points_test == 10).all() and not ten.jacobian_norm_test.equals(all_points)
    assert main(["measure", str(out)]) == 0  # back to the sweep's own settings: nothing to run
    back = load_results(out).set_index("trial_id")
    assert back.jacobian_norm_test.equals(all_points) and (back.jacobian_points_test == 60).all()
    # the other measures' settings: measure_settings.*, recorded with each value
    assert main(["measure", str(out), "measures=[sharpness]", "measure_settings.sharpness.steps=1",
                 "measure_settings.sharpness.points=20"]) == 0
    from analysis import load_measures

    sh = load_measures(out).query("measure == 'sharpness'")
    assert len(sh) == 5 and sh.value.notna().all()
    assert all(json.loads(t) == {"alpha": 5e-4, "points": 20, "steps": 1} for t in sh.settings)
    # launching again with more measures: nothing retrained, the new ones from the weights
    launch(compose(TINY + [f"out={out}", f"measure_modules=[{LAB}]",
                           "measures=[jacobian_norm_train,transitions_test,weight_l2]"]))
    assert _stamps(out) == trials
    df = load_results(out)
    assert df[["jacobian_norm_train", "transitions_test", "weight_l2"]].notna().all().all()
    # the report ranks every measure of the sweep; none is taken for a hyperparameter
    import warnings

    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(["report", str(out), "--train-acc", "0", "--bootstrap", "5"]) == 0
    table = pd.read_csv(out / "report" / "statistics.csv")
    assert {"weight_l2", "jacobian_norm_test", "jacobian_norm_train",
            "transitions_test"} <= set(table.measure)


@pytest.mark.slow
def test_sweep_measure_without_weights_is_refused(ray_local, tmp_path, capsys):
    from sweep.cli import main
    from sweep.driver import launch

    out = tmp_path / "sweep"
    launch(compose(TINY + [f"out={out}", "save_weights=false"]))
    capsys.readouterr()
    assert main(["measure", str(out), "measures=[weight_l2]", f"measure_modules=[{LAB}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "save_weights" in err[0] and "weight_l2" in err[0]
    assert not (out / "measures").exists() or not any(
        "weight_l2" in p.name for p in (out / "measures").iterdir())


def test_unknown_measures_and_modules_are_refused_before_anything_runs(tmp_path, capsys):
    from sweep.cli import main

    out = tmp_path / "s"
    assert main(["launch", f"out={out}", "measures=[jacobian_norm_tset]"]) == 2
    err = capsys.readouterr().err
    assert "jacobian_norm_tset" in err and "jacobian_norm_test" in err and not out.exists()
    assert main(["launch", f"out={out}", "measure_modules=[/no/such/file.py]"]) == 2
    assert "cannot import" in capsys.readouterr().err and not out.exists()


def _readme_blocks():
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    module = next(b for b in blocks if b.startswith("# lab_measures.py"))
    usage = next(b for b in blocks if "import lab_measures" in b)
    return module, usage


def test_the_lab_module_of_these_tests_is_the_readmes():
    body = _readme_blocks()[0].split("\n", 1)[1]  # less its "# lab_measures.py" line
    assert body.strip() in Path(LAB).read_text()


@pytest.fixture
def builtin_registry():
    """Every built-in measure (``workers.measures.*``) only, for the test; the registry as it
    was afterwards."""
    saved = dict(REGISTRY)
    for name, m in saved.items():
        if not m.fn.__module__.startswith("workers.measures."):
            del REGISTRY[name]
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_the_readme_example_runs_and_registers_a_measure(builtin_registry, tmp_path,
                                                         monkeypatch):
    """The README's registry example, executed as written (its module saved as
    lab_measures.py): its measure equals the slow computation and runs through the registry
    like a built-in one; running the definition again (a notebook cell) is no error. Its
    network has PyTorch's default biases: every measure but the bias-free ones has a value,
    and those say why (issue #26)."""
    import sys
    import warnings

    from workers.measures import UndefinedMeasures

    module, usage = _readme_blocks()
    (tmp_path / "lab_measures.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lab_measures", raising=False)
    scope: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(usage, "README.md", "exec"), scope)
    values = scope["values"]
    w = np.concatenate([p.detach().numpy().ravel().astype(np.float64)
                        for p in scope["model"].parameters()])
    assert values["weight_l2"] == pytest.approx(math.sqrt(float((w ** 2).sum())), rel=1e-12)
    assert values["jacobian_norm_test"] > 0
    undefined = {n for n, v in values.items() if math.isnan(v)}
    assert undefined == set(values.reasons) and len(undefined) == 14
    assert all("path" in n or "neyshabur" in n for n in undefined)
    assert all("have biases" in why for why in values.reasons.values())
    assert len([c for c in caught if issubclass(c.category, UndefinedMeasures)]) == 1
    assert "weight_l2" in REGISTRY and REGISTRY["weight_l2"].source.startswith("Neyshabur")
    exec(compile(module, "lab_measures.py", "exec"), {"__name__": "lab_measures"})


def test_a_measure_module_missing_on_a_worker_is_a_retryable_failure(tmp_path):
    from workers.results.spec import RunContext
    from workers.trial import run_trial

    spec = TrialSpec(DataSpec("digits", train_size=60, test_size=20), 8, 2, "relu", "sgd",
                     0.01, 32, 1.0, 1, train=TrainSpec(steps=5),
                     metrics=MetricSpec(measures=("jacobian_norm_test",),
                                        measure_modules=(str(tmp_path / "gone.py"),)))
    row = run_trial(spec, RunContext(str(tmp_path)))
    assert row["status"] == "failed" and row["retryable"] and "gone.py" in row["error"]


@pytest.mark.slow
def test_values_that_raised_are_counted_and_retried_on_request(ray_local, tmp_path, capsys):
    from analysis import load_measures, load_results
    from sweep.cli import main
    from sweep.driver import launch

    out = tmp_path / "sweep"
    launch(compose(TINY + [f"out={out}", "measures=[jacobian_norm_test]"]))
    flag = tmp_path / "broken"
    flag.write_text("")
    mod = tmp_path / "flaky.py"
    mod.write_text(
        "from pathlib import Path\n"
        "from workers.measures import register\n\n\n"
        "@register('flaky', source='test')\n"
        "def flaky(inputs):\n"
        f"    if Path({str(flag)!r}).exists():\n"
        "        raise RuntimeError('a bug')\n"
        "    return 1.5\n")
    args = ["measure", str(out), "measures=[flaky]", f"measure_modules=[{mod}]"]
    capsys.readouterr()
    assert main(args) == 0
    assert "5 values raised" in capsys.readouterr().err
    assert load_results(out).flaky.isna().all()
    flag.unlink()  # the bug fixed: a plain call does nothing, --retry-errors evaluates them
    assert main(args) == 0 and "nothing to evaluate" in capsys.readouterr().err
    assert main(args + ["--retry-errors"]) == 0
    assert (load_results(out).flaky == 1.5).all()
    assert len(list((out / "measures" / "raised").iterdir())) == 5  # moved aside, not deleted
    assert load_measures(out, ["flaky"]).error.isna().all()


def test_a_measure_returning_nan_is_null_with_its_reason(scratch_registry):
    @register("nan_measure", source="test")
    def nan_measure(inputs):
        return float("nan")

    @register("inf_measure", source="test")
    def inf_measure(inputs):
        return -math.inf

    model, x, y = _model_and_data()
    out = evaluate_outcomes(MeasureInputs(model, x_test=x), ["nan_measure", "inf_measure"])
    assert out["nan_measure"].value is None and "nan" in out["nan_measure"].error
    assert out["nan_measure"].error.startswith("undefined")
    assert out["inf_measure"].value is None and "-inf (not finite)" in out["inf_measure"].error


def test_measure_refuses_study_settings_and_training_keys(tmp_path, capsys):
    import shutil

    from sweep.cli import main

    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "schema2_sweep", old)
    assert main(["measure", str(old), "metrics.ellipse_k=16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "off-data studies" in err
    allowed = err.split("allowed: ")[1].strip().split(", ")
    assert "metrics.jacobian_points" in allowed and "metrics.ellipse_k" not in allowed
    assert {"measure_settings.*", "cluster.*", "resources.*", "dataset.root"} <= set(allowed)
    for key in allowed:  # each one accepted (the same value as stored: nothing to do)
        assert key.endswith(".*") or key.startswith("metrics.") or key in (
            "save_weights", "figure", "progress", "dataset.root", "dataset.download",
            "measures", "measure_modules", "train.checkpoint_every", "train.keep_checkpoints",
            "train.time_budget", "train.fallback_steps"), key
    assert main(["measure", str(old), "train.steps=5"]) == 2
    assert "measure: cannot override 'train.steps'" in capsys.readouterr().err


def test_gpus_the_cluster_lacks_are_refused():
    from sweep.config import ConfigError
    from sweep.driver import check_trials_fit

    class FakeRay:
        def cluster_resources(self):
            return {"CPU": 2.0}

        def nodes(self):
            return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    assert check_trials_fit(FakeRay(), 1, 0, None) is None
    with pytest.raises(ConfigError, match="gpus_per_trial: 1, but the Ray cluster has 0 GPUs"):
        check_trials_fit(FakeRay(), 1, 1, True)


def test_all_means_the_built_in_measures_and_the_sweeps_own_modules():
    """`measures: [all]` (the default) is what the sweep's workers can evaluate: the built-in
    measures and those of its measure_modules, not a measure registered in this process by
    other means (a notebook cell, another sweep's module)."""
    @register("notebook_only_measure", source="test", needs=("model",))
    def notebook_only_measure(inputs):
        return 0.0

    try:
        plain = compose([]).measures
        assert "notebook_only_measure" not in plain and "weight_l2" not in plain
        assert {"jacobian_norm_test", "transitions_test", "neyshabur_l2", "pacbayes_flatness",
                "expected_sharpness", "sharpness"} <= set(plain)
        assert len(plain) >= 30
        with_lab = compose([f"measure_modules=[{LAB}]"]).measures
        assert set(with_lab) == set(plain) | {"weight_l2"}
        # named explicitly, a registered measure is taken as asked
        assert compose(["measures=[notebook_only_measure]"]).measures == ("notebook_only_measure",)
    finally:
        REGISTRY.pop("notebook_only_measure", None)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_transitions_without_test_images_is_undefined(act):
    # no loops to count along: a null value with its reason, for the exact and the sampled count
    model = build_mlp(16, 8, 3, 2, act)
    out = evaluate_outcomes(MeasureInputs(model, x_test=torch.zeros(0, 16), image_shape=(1, 4, 4)),
                            ["transitions_test"])["transitions_test"]
    assert out.value is None and out.error.startswith("undefined")


def test_measure_settings_reach_the_measures_and_old_sweeps_keep_the_defaults(tmp_path):
    """``measure_settings``: a group (pacbayes) sets its six measures, a member's own entry
    wins; ``points: all`` is every point; a sweep.json written before the key existed loads
    with every measure at its registered defaults."""
    from sweep.driver import stored_config

    plain = ["experiment=paper_small"]  # (the demo sets some: conf/experiment/demo.yaml)
    cfg = compose(plain + ["measure_settings.pacbayes.samples=5",
                          "measure_settings.pacbayes_orig.samples=7",
                          "measure_settings.sharpness.points=all"])
    got = cfg.metric_spec().measure_settings()
    assert got["pacbayes_flatness"] == {"samples": 5} and got["pacbayes_mag_init"] == {"samples": 5}
    assert got["pacbayes_orig"] == {"samples": 7} and got["sharpness"] == {"points": None}
    assert "expected_sharpness" not in got
    # the paper's measures too: at their registered defaults, nothing to set
    assert compose(plain).metric_spec().measure_settings() == {}
    # the spec's settings survive the trip to a worker (JSON of the MetricSpec's fields)
    from dataclasses import asdict

    ms = cfg.metric_spec()
    back = MetricSpec(**json.loads(json.dumps(asdict(ms))) | {
        "measures": ms.measures, "measure_modules": ms.measure_modules})
    assert back.measure_settings() == got
    # an old sweep.json: no measure_settings key
    out = tmp_path / "old"
    out.mkdir()
    old = compose(plain + [f"out={out}"])
    conf = asdict(old)
    conf.pop("measure_settings")
    (out / "sweep.json").write_text(json.dumps({"identity_hash": old.identity_hash(),
                                                "identity_version": 2, "config": conf}))
    loaded = stored_config(out)
    assert loaded.measure_overrides() == "{}" and loaded.identity_hash() == old.identity_hash()
    # and `sweep measure` / `sweep resume` may set them on a stored sweep
    assert stored_config(out, ["measure_settings.sharpness.steps=3"],
                         command="measure").metric_spec().measure_settings()["sharpness"] == {
        "steps": 3}


def test_the_launch_command_of_an_old_demo_sweep_keeps_the_registered_defaults():
    """A sweep.json written before ``measure_settings`` existed ran the registered defaults:
    the command the report prints to launch it again sets the demo's own settings back."""
    import shlex
    from dataclasses import asdict

    from sweep.show import launch_command

    conf = asdict(compose(DEMO))
    assert json.loads(compose(DEMO).measure_overrides())  # (the demo sets some)
    conf.pop("measure_settings")
    command, exact = launch_command(conf)
    assert exact and "measure_settings.sharpness.steps=null" in command
    again = compose(shlex.split(command)[2:])
    assert again.measure_overrides() == "{}"


def test_the_reports_header_names_the_settings_other_than_the_defaults(tmp_path):
    from analysis.report import settings_html
    from workers.measures import REGISTRY
    from workers.results.measure_table import write_selection

    assert settings_html(str(tmp_path)) == ""  # nothing recorded
    defaults = {n: (REGISTRY[n].version, dict(REGISTRY[n].settings))
                for n in ("sharpness", "pacbayes_orig", "params")}
    write_selection(str(tmp_path), defaults)
    assert settings_html(str(tmp_path)) == ""  # all at their defaults
    write_selection(str(tmp_path), {"sharpness": (2, {**REGISTRY["sharpness"].settings,
                                                      "steps": 10})})
    line = settings_html(str(tmp_path))
    assert "sharpness steps=10" in line and "pacbayes" not in line and "alpha" not in line


def test_measure_names_that_are_result_columns_are_refused(scratch_registry, tmp_path):
    """#22.4: a measure named like a column of the record or the measures table would replace
    it in load_results (``gen_gap``: the target of every statistic)."""
    import pyarrow.parquet as pq

    from sweep.config import ConfigError, compose
    from workers.measures import reserved_names
    from workers.results.measure_table import MEASURE_SCHEMA
    from workers.results.record import POINT_TYPE, SUMMARY_COLUMNS

    for name in ("gen_gap", "status", "width", "test_acc", "loss", "value", "all"):
        with pytest.raises(ValueError, match="reserved"):
            register(name, source="s")(lambda i: 0.0)
        assert name not in REGISTRY
    with pytest.raises(ConfigError, match="reserved"):
        compose(["measures=[gen_gap]"])
    # every record and table column, independently listed from the schemas
    cols = set(SUMMARY_COLUMNS) | {f.name for f in POINT_TYPE} | set(MEASURE_SCHEMA.names)
    assert reserved_names() == cols - {"jacobian_norm_train", "jacobian_norm_test",
                                       "transitions_test"} | {"all", "sign"}

    # a value stored under such a name (an older release allowed it) never replaces the column
    from analysis import load_results
    from workers.measures import Outcome
    from workers.results.measure_table import write_outcome
    from workers.results.spec import RunContext
    from workers.trial import run_trial

    spec = TrialSpec(DataSpec("digits", train_size=100, test_size=40), 8, 2, "relu", "sgd",
                     0.01, 32, 1.0, 1, train=TrainSpec(steps=20),
                     metrics=MetricSpec(measures=("jacobian_norm_test",)))
    row = run_trial(spec, RunContext(str(tmp_path)))
    write_outcome(str(tmp_path), spec.trial_id, Outcome("gen_gap", 123.0, 1, {}, 0.0))
    with pytest.warns(UserWarning, match="gen_gap"):
        df = load_results(tmp_path)
    assert df.gen_gap.iloc[0] == pytest.approx(row["train_acc"] - row["test_acc"])


def test_a_module_registering_a_reserved_name_is_refused_naming_the_module(tmp_path, capsys):
    from sweep.cli import main

    mod = tmp_path / "bad_lab.py"
    mod.write_text("from workers.measures import register\n\n"
                   "register('test_acc', source='s')(lambda i: 0.0)\n")
    try:
        code = main(["plan", f"out={tmp_path / 's'}", f"measure_modules=[{mod}]"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(mod) in err and "'test_acc' is reserved" in err
    assert not (tmp_path / "s").exists()


# --- the paper's measures as ordinary measures; settings declared with the measure ----------------


def test_the_papers_measures_are_set_like_any_other_and_the_metrics_aliases_still_work():
    """``measure_settings.<measure>.<setting>`` sets the Jacobian norms and the transitions;
    ``metrics.jacobian_points``, ``.transitions_points``, ``.transitions_k`` name the same
    settings (older sweeps, commands); both for one setting is refused with one line."""
    from sweep.config import ConfigError

    plain = ["experiment=paper_small"]
    new = compose(plain + ["measure_settings.jacobian_norm_test.points=40",
                           "measure_settings.transitions_test.points=0",
                           "measure_settings.transitions_test.k=64"]).metric_spec()
    assert new.measure_settings() == {"jacobian_norm_test": {"points": 40},
                                      "transitions_test": {"points": 0, "k": 64}}
    assert "transitions_test" not in new.active_measures()  # 0 points: off, as the alias's 0
    old = compose(plain + ["metrics.jacobian_points=40", "metrics.transitions_points=0",
                           "metrics.transitions_k=64"]).metric_spec()
    assert old.measure_settings() == {"jacobian_norm_train": {"points": 40},
                                      "jacobian_norm_test": {"points": 40},
                                      "transitions_test": {"points": 0, "k": 64}}
    assert old.active_measures() == new.active_measures()
    # null is every point, as it always was (and not the default 100 of the transitions)
    assert compose(plain + ["metrics.transitions_points=null"]).metric_spec().measure_settings() \
        == {"transitions_test": {"points": None}}
    with pytest.raises(ConfigError, match=r"^measure_settings.transitions_test.k: 64, and its "
                                          r"alias metrics.transitions_k is 32") as e:
        compose(plain + ["metrics.transitions_k=32", "measure_settings.transitions_test.k=64"])
    assert "\n" not in str(e.value)
    # an alias at the registered default sets nothing: the measure_settings key decides
    assert compose(plain + ["metrics.transitions_k=4096", "measure_settings.transitions_test.k=64"]
                   ).metric_spec().measure_settings() == {"transitions_test": {"k": 64}}
    # a MetricSpec of an older plan (the alias fields) and one of today give the same settings
    assert MetricSpec(jacobian_points=40, transitions_points=0, transitions_k=64
                      ).measure_settings() == old.measure_settings()
    with pytest.raises(ValueError, match="two values"):
        MetricSpec(transitions_k=8, measure_overrides='{"transitions_test":{"k":64}}'
                   ).measure_settings()


def test_a_measures_settings_and_their_rules_are_declared_with_it(scratch_registry):
    """The defaults come from the function's keyword-only parameters; bounds and the rule
    across settings are registered with the measure, and the configuration applies them; the
    MetricSpec alias fields' defaults are those the paper's measures register."""
    import dataclasses

    from workers.measures import setting_rule
    from workers.results.measure_values import METRIC_ALIASES

    def rule(st):
        if st["low"] > st["high"]:
            raise ValueError(f"low {st['low']} > high {st['high']}")

    @register("banded", source="test", lower={"low": 0}, check=rule)
    def banded(inputs, *, low: int = 1, high: int = 5, scale: float = 0.5):
        return float(high - low) * scale

    m = REGISTRY["banded"]
    assert m.settings == {"low": 1, "high": 5, "scale": 0.5} and m.check is rule
    assert setting_rule("banded", "low") == ("int", 0)
    assert setting_rule("banded", "high") == ("int", 1)
    assert setting_rule("banded", "scale") == ("number", None)
    assert setting_rule("transitions_test", "points") == ("points", 0)
    model, x, y = _model_and_data()
    assert evaluate(model, ["banded"], settings={"banded": {"low": 2}})["banded"] == 1.5
    with pytest.raises(ValueError, match="no default"):
        register("nodefault", source="s")(lambda i, *, k: 0.0)
    with pytest.raises(ValueError, match="disagree"):
        register("wrong", source="s", settings={"k": 2})(lambda i, *, k=1: 0.0)
    with pytest.raises(ValueError, match="lower bounds"):
        register("nolower", source="s", lower={"q": 0})(lambda i, *, k=1: 0.0)
    # (the older form: settings= agreeing with the function)
    register("older", source="s", settings={"k": 1})(lambda i, k=1: float(k))
    assert REGISTRY["older"].settings == {"k": 1}
    defaults = {f.name: f.default for f in dataclasses.fields(MetricSpec)}
    for alias, targets in METRIC_ALIASES.items():
        assert all(REGISTRY[n].settings[k] == defaults[alias] for n, k in targets), alias
