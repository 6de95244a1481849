"""The commands that neither train nor measure answer without importing torch or Ray (importing
torch alone costs 1.5-2.5 s of CPU): ``sweep status``, ``show``, ``--help`` and every one-line
error for bad input. Each command runs in a fresh interpreter that reports, after it, whether
torch or Ray was imported. The torch-free copies of facts (the activation names, float64's
range) agree with torch's."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from procs import run

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "schema2_sweep"  # 3 of 4 trials done

# runs ``sweep`` (sweep.cli.main) on its arguments; its last line on stdout: what it printed,
# its exit code, and whether torch and ray were imported meanwhile
HARNESS = r"""
import contextlib, io, json, sys
from sweep.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        rc = main(sys.argv[1:])
    except SystemExit as e:
        rc = e.code
print(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue(),
                  "torch": "torch" in sys.modules, "ray": "ray" in sys.modules}))
"""


def sweep_in_fresh_process(args: list[str], cwd: Path, before: str = "") -> dict:
    """``sweep ARGS`` in a new interpreter (``before``: code run first): {"rc", "out", "err",
    "torch", "ray"}."""
    r = run([sys.executable, "-c", before + HARNESS, *args], capture_output=True, text=True,
            timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(a copy of a small finished sweep, an empty directory that is not a sweep)."""
    root = tmp_path_factory.mktemp("imports")  # (the commands' working directory: no name
    shutil.copytree(FIXTURE, root / "finished")  # in it may shadow a package, as sweep/ would)
    (root / "empty").mkdir()
    return root


CASES = [  # (arguments; SWEEP and EMPTY stand for the directories), exit code, words printed
    (["status", "SWEEP"], 0, "4 trials planned"),
    (["status", "EMPTY"], 2, "is not a sweep directory"),
    (["status", "MISSING"], 2, "does not exist"),
    (["--help"], 0, "sweep COMMAND --help"),
    (["status", "--help"], 0, "SWEEP_DIR"),
    (["show"], 0, "trials:"),
    (["show", "--keys"], 0, "measure_settings."),
    (["show", "datset=digits"], 2, "datset: unknown key"),
    (["launch", "datset=digits"], 2, "datset: unknown key"),
    (["launch", "trials=0"], 2, "trials:"),
    (["plan", "space.activation=[foo]"], 2, "space.activation: unknown value 'foo'"),
    (["launch", "measures=[bogus]"], 2, "measures: unknown"),
    (["launch", "measure_settings.sharpness.steps=-1"], 2, "measure_settings.sharpness.steps"),
    (["launch", "train.checkpoint_every=often"], 2, "train.checkpoint_every"),
    (["measure", "SWEEP", "measures=[bogus]"], 2, "measures: unknown"),
    (["resume", "SWEEP", "trials=5"], 2, "cannot override 'trials'"),
    (["resume", "EMPTY"], 2, "is not a sweep directory"),
    (["report", "SWEEP", "--train-acc", "2"], 2, "--train-acc"),
    (["report", "EMPTY"], 2, "is not a sweep directory"),
    (["compact", "EMPTY"], 2, "is not a sweep directory"),
    (["bogus"], 2, "COMMAND: unknown 'bogus'"),
]


@pytest.mark.parametrize("args,rc,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_commands_that_neither_train_nor_measure_import_neither_torch_nor_ray(dirs, args, rc,
                                                                               words):
    where = {"SWEEP": str(dirs / "finished"), "EMPTY": str(dirs / "empty"),
             "MISSING": str(dirs / "missing")}
    r = sweep_in_fresh_process([where.get(a, a) for a in args], cwd=dirs)
    assert r["rc"] == rc, r
    assert words in r["out"] + r["err"], r
    if rc == 2:  # bad input: one line on stderr
        assert len(r["err"].strip().splitlines()) == 1, r["err"]
    assert not r["torch"], f"sweep {' '.join(args)} imported torch"
    assert not r["ray"], f"sweep {' '.join(args)} imported ray"


def test_the_check_sees_an_import_of_torch(dirs):
    """The harness reports torch once something imports it (else the test above could not
    fail)."""
    r = sweep_in_fresh_process(["--help"], cwd=dirs, before="import workers.train\n")
    assert r["rc"] == 0 and r["torch"]


def test_the_measure_registry_loads_without_torch_and_its_measures_compute(dirs):
    """Every built-in measure is registered (names, settings, signs) without torch; its
    functions import torch when they compute."""
    code = r"""
import json, sys
import workers.measures as m
import sweep.config
loaded = "torch" in sys.modules
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.ReLU(),
                            torch.nn.Linear(8, 3, bias=False))
x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
v = m.evaluate(model, ["jacobian_norm_test", "l2", "margin_gamma10", "dist_spec_init",
                       "sharpness"], x_train=x, y_train=y, x_test=x, init_model=model,
               settings={"sharpness": {"steps": 2, "points": 10}})
print(json.dumps({"torch": loaded, "names": list(m.REGISTRY), "values": v,
                  "reasons": v.reasons}))
"""
    r = run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
            cwd=dirs)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert not got["torch"], "importing workers.measures or sweep.config imported torch"
    from workers.measures import available

    # (the built-in ones: other tests in this process register user measures too)
    assert got["names"] == available(()) and len(got["names"]) >= 40
    assert not got["reasons"], got["reasons"]
    assert got["values"]["dist_spec_init"] == 0.0  # (the model is its own initialization)
    assert all(math.isfinite(v) for v in got["values"].values())


def test_the_torch_free_facts_agree_with_torch():
    import torch

    from workers.activations import ACTIVATIONS
    from workers.measures import norms
    from workers.names import ACTIVATION_NAMES, MINIBATCH_OPTIMIZERS, OPTIMIZERS

    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES
    assert set(MINIBATCH_OPTIMIZERS) == set(OPTIMIZERS) - {"lbfgs"}
    assert norms._LOG_MAX == math.log(torch.finfo(torch.float64).max)
    assert norms._LOG_MIN == math.log(torch.finfo(torch.float64).tiny)
