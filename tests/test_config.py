import subprocess
import sys

import pytest

from sweep.cli import main
from sweep.config import ConfigError, compose

ACTS = "relu, relu6, tanh, hardtanh, hardsigmoid"
OPTS = "sgd, momentum, adam, rmsprop, lbfgs"


def test_default_is_the_demo_on_digits():
    cfg = compose([])
    assert cfg.name == "demo" and cfg.dataset.name == "digits"
    assert 24 <= cfg.trials <= 48
    assert set(cfg.space.activation) == set(ACTS.split(", "))
    assert set(cfg.space.optimizer) == set(OPTS.split(", "))
    assert set(cfg.plan.grid) == {"activation", "optimizer"}


def test_study_experiments():
    t = compose(["experiment=trajectory"])
    assert t.metrics.ellipse_k > 0 and t.metrics.boundary_grid == 0 and t.trials == len(t.space.seed)
    assert (t.space.depth, t.space.width, t.space.activation) == ((20,), (200,), ("relu",))
    b = compose(["experiment=boundaries"])
    assert b.metrics.boundary_grid > 0 and b.dataset.augment
    assert (b.space.depth, b.space.width, b.space.activation) == ((15,), (300,), ("relu6",))
    assert compose([]).metrics.ellipse_k == 0  # off in the demo


def test_overrides_and_scalars_become_lists():
    cfg = compose(["dataset=fashion_mnist", "dataset.train_size=5000", "trials=64",
                   "train.steps=4096", "space.width=[64,256]", "space.activation=relu", "seed=3"])
    assert cfg.dataset.name == "fashion_mnist" and cfg.dataset.train_size == 5000
    assert cfg.trials == 64 and cfg.train.steps == 4096 and cfg.seed == 3
    assert cfg.space.width == (64, 256) and cfg.space.activation == ("relu",)


@pytest.mark.parametrize("override,pattern", [
    ("dataset=svhn", "dataset: unknown value 'svhn'; allowed: cifar10, cifar100, digits, fashion_mnist, mnist"),
    ("experiment=nope", "experiment: unknown value 'nope'; allowed: boundaries, cross_entropy, demo, factors, paper_large, paper_small, per_point, trajectory"),
    ("metrics.transitions_points=-1", "metrics.transitions_points: must be >= 0, got -1"),
    ("metrics.transitions_k=1", "metrics.transitions_k: must be >= 2, got 1"),
    ("metrics.ellipse_k=-5", "metrics.ellipse_k: must be >= 0, got -5"),
    ("metrics.ellipse_k=1", r"metrics.ellipse_k: 1; allowed: 0 \(off\) or an integer >= 2"),
    ("metrics.boundary_extent=0", "metrics.boundary_extent: must be > 0, got 0"),
    ("space.activation=[relu,swish]", f"space.activation: unknown value 'swish'; allowed: {ACTS}"),
    ("space.optimizer=adagrad", f"space.optimizer: unknown value 'adagrad'; allowed: {OPTS}"),
    ("space.width=[0,8]", "space.width: must be >= 1, got 0"),
    ("space.depth=1", "space.depth: must be >= 2, got 1"),
    ("space.lr=[0.1,0]", "space.lr: must be > 0, got 0"),
    ("space.lr=-1e-3", "space.lr: must be > 0"),
    ("train.steps=0", "train.steps: must be >= 1, got 0"),
    ("space.batch_size=5000", r"space.batch_size: 5000 is larger than the train set \(1347 points\); allowed: 1..1347"),
    ("dataset.train_size=100000", "dataset.train_size: must be <= 1347"),
    ("plan.sampler=grid", "plan.sampler: unknown value 'grid'; allowed: random, qmc"),
    ("plan.grid=[colour]", "plan.grid: unknown value 'colour'"),
    ("space.width=[wide]", "space.width: expected an integer, got 'wide'"),
    ("no_such_key=1", "configuration: .*no_such_key"),
])
def test_bad_input_is_one_line_naming_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        compose([override])
    assert "\n" not in str(e.value)


def test_batch_size_against_subset_and_lbfgs_only():
    with pytest.raises(ConfigError, match="larger than the train set \\(100 points\\)"):
        compose(["dataset.train_size=100"])
    # full-batch L-BFGS alone does not use space.batch_size
    cfg = compose(["dataset.train_size=100", "space.optimizer=lbfgs"])
    assert cfg.space.optimizer == ("lbfgs",)


def test_augmentation_with_lbfgs_is_refused():
    with pytest.raises(ConfigError, match="dataset.augment"):
        compose(["dataset.augment=true"])
    compose(["dataset.augment=true", "space.optimizer=[sgd,adam]"])


def test_cli_exit_code_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["launch", "space.activation=[relu,swish]", f"out={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "space.activation" in err and "allowed" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_exit_2_before_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["launch", "dataset=mnist", f"dataset.root={tmp_path / 'nothing'}",
               "space.batch_size=[128]"])
    err = capsys.readouterr().err
    assert rc == 2 and "nothing" in err and "dataset.download=true" in err
    assert list(tmp_path.iterdir()) == []


def test_out_directory_of_a_different_sweep_is_refused(tmp_path, monkeypatch, capsys):
    from sweep.driver import prepare

    out = tmp_path / "o"
    prepare(compose([f"out={out}", "trials=25"]))
    before = sorted(p.name for p in out.rglob("*"))
    rc = main(["launch", f"out={out}", "trials=26"])
    assert rc == 2 and "holds a different sweep" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["launch", f"out={tmp_path / 'other'}"]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_console_script_usage_error():
    r = subprocess.run([sys.executable, "-m", "sweep.cli", "launch", "train.steps=-5"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "sweep: error: train.steps: must be >= 1, got -5"
