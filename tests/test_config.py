import sys

import pytest

from procs import run
from sweep.cli import main
from sweep.config import ConfigError, compose, from_dict

ACTS = "relu, relu6, tanh, hardtanh, hardsigmoid"
OPTS = "sgd, momentum, adam, rmsprop, lbfgs"


def test_default_is_the_demo_on_digits():
    cfg = compose([])
    assert cfg.name == "demo" and cfg.dataset.name == "digits"
    assert cfg.trials == 90
    assert set(cfg.space.activation) == set(ACTS.split(", "))
    assert set(cfg.space.optimizer) == set(OPTS.split(", "))
    assert set(cfg.plan.grid) == {"activation", "optimizer", "width", "lr"}


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
    ("experiment=nope", "experiment: unknown value 'nope'; allowed: boundaries, cross_entropy, demo, factors, neyshabur_labels, neyshabur_width, paper_large, paper_small, per_point, trajectory"),
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
    ("trials=abc", "trials: expected an integer, got 'abc'; allowed: an integer >= 1"),
    ("no_such_key=1", "no_such_key: unknown key"),
    ("measure_settings.sharpness.pointz=3", "measure_settings.sharpness.pointz: unknown key; "
     "closest valid keys: measure_settings.sharpness.points"),
    ("measure_settings.sharpness.points=0", "measure_settings.sharpness.points: must be >= 1"),
    ("measure_settings.pacbayes.samples=2.5", "measure_settings.pacbayes.samples: expected an integer"),
    ("measure_settings.pacbayes.upper=0", "measure_settings.pacbayes.upper: must be > 0"),
    ("measure_settings.pacbayes.tolerance=0.2", "measure_settings.pacbayes: tolerance 0.2 >= target 0.1"),
    ("measure_settings.expected_sharpness.alpha_max=1e-5", "alpha_min 0.001 > alpha_max 1e-05"),
    ("measure_settings.transitions_test.pointz=3", "measure_settings.transitions_test.pointz: "
     "unknown key"),
    ("measure_settings.transitions_test.k=1", "measure_settings.transitions_test.k: must be >= 2, "
     "got 1"),
    ("measure_settings.jacobian_norm_test.points=0", "measure_settings.jacobian_norm_test.points: "
     "must be >= 1, got 0"),
    ("measure_settings.sharpness.steps=-1", "measure_settings.sharpness.steps: must be >= 0, got -1"),
    ("measure_settings.sharpness.alpha=-1", "measure_settings.sharpness.alpha: must be >= 0.0, got -1"),
    ("measure_settings.pacbayes.steps=0", "measure_settings.pacbayes.steps: must be >= 1, got 0"),
    ("measure_settings.pacbayes.target=1.5", "measure_settings.pacbayes: target 1.5: a training "
     "error rises by less than 1; allowed: 0 < target < 1"),
    ("measure_settings.expected_sharpness.alpha_max=0.1", "alphas 1 takes alpha_min \\(0.001\\) "
     "alone, alpha_max 0.1 would not be used"),
])


def test_bad_input_is_one_line_naming_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        compose([override])
    assert "\n" not in str(e.value)


def test_a_group_setting_and_a_members_own_are_checked_together():
    # pacbayes_orig runs with the group's target and its own tolerance
    with pytest.raises(ConfigError, match=r"measure_settings.pacbayes_orig: tolerance 0.05 >= "
                                          r"target 0.04 \(for pacbayes_orig\)"):
        compose(["measure_settings.pacbayes.target=0.04",
                 "measure_settings.pacbayes_orig.tolerance=0.05"])
    ok = compose(["measure_settings.pacbayes.target=0.04", "measure_settings.pacbayes.tolerance=0.005",
                  "measure_settings.sharpness.steps=0"])
    got = ok.metric_spec().measure_settings()["pacbayes_orig"]
    assert got["target"] == 0.04 and got["tolerance"] == 0.005


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
    r = run([sys.executable, "-m", "sweep.cli", "launch", "train.steps=-5"],
            capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == "sweep: error: train.steps: must be >= 1, got -5"


# --- unknown keys (issue: a mistyped key was silently ignored) ------------------------------


@pytest.mark.parametrize("override,key,closest", [
    ("+train.stpes=100", "train.stpes", "train.steps"),  # the example
    ("train.stpes=100", "train.stpes", "train.steps"),
    ("++train.stpes=100", "train.stpes", "train.steps"),
    ("~train.stpes", "train.stpes", "train.steps"),
    ("+metrics.transitons_points=3", "metrics.transitons_points", "metrics.transitions_points"),
    ("cluster.adress=127.0.0.1:6379", "cluster.adress", "cluster.address"),
    ("trian.steps=3", "trian.steps", "train.steps"),
    ("++resources.cpus_per_trail=2", "resources.cpus_per_trail", "resources.cpus_per_trial"),
    ("datset=digits", "datset", "dataset"),
])
def test_unknown_keys_name_the_key_and_the_closest_valid_ones(override, key, closest):
    with pytest.raises(ConfigError) as e:
        compose([override, "trials=2"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{key}: unknown key")
    assert closest in msg.split("closest valid keys:")[1]


def test_the_schema_is_checked_by_omegaconf_after_hydra(monkeypatch):
    """Without the up-front check, Hydra's + and ++ would add the key; OmegaConf's struct-mode
    merge into the schema (from the config dataclasses) still refuses it."""
    import sweep.config as config

    monkeypatch.setattr(config, "check_override_keys", lambda *a, **k: None)
    for o in ("+train.stpes=100", "++cluster.adress=x", "+foo.bar=1"):
        with pytest.raises(ConfigError, match="unknown key"):
            compose([o])
    assert set(config.schema_keys()) >= {"train.steps", "train.lbfgs.lr", "cluster.address",
                                          "metrics.transitions_points", "space.width"}


@pytest.mark.parametrize("cmd", ["plan", "launch"])
def test_cli_unknown_key_exit_2_nothing_written_no_ray(tmp_path, monkeypatch, capsys, cmd):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    rc = main([cmd, "+train.stpes=100", "trials=2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "train.stpes" in err and "train.steps" in err
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_unknown_and_prefixed_keys_before_ray(tmp_path, monkeypatch, capsys):
    """The issue's example: `sweep resume DIR cluster.adress=HOST:PORT` ran on a new local Ray."""
    import ray

    out = tmp_path / "s"
    assert main(["plan", "trials=2", f"out={out}"]) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    for over, words in (("cluster.adress=127.0.0.1:6379", ("cluster.adress", "cluster.address")),
                        ("+resources.max_retrys=1", ("resources.max_retrys",
                                                     "resources.max_retries")),
                        ("~cluster.address", ("cannot override", "~cluster.address")),
                        ("train.steps=5", ("cannot override", "train.steps"))):
        rc = main(["resume", str(out), over])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and all(w in err for w in words), err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_an_alias_on_the_command_line_overrides_the_experiments_measure_settings():
    """The demo's YAML sets measure_settings.transitions_test.points 25 and jacobian_norm 500;
    the older names on the command line override them as any override does (one value, the
    command line's), and the same setting given both ways on the command line is refused."""
    s = compose(["metrics.transitions_points=3", "metrics.jacobian_points=7"]).metric_spec()
    settings = s.measure_settings()
    assert settings["transitions_test"]["points"] == 3
    assert settings["jacobian_norm_train"]["points"] == settings["jacobian_norm_test"]["points"] == 7
    assert compose([]).metric_spec().measure_settings()["transitions_test"]["points"] == 25
    with pytest.raises(ConfigError, match="set twice"):
        compose(["metrics.transitions_points=3", "measure_settings.transitions_test.points=4"])


def _old_style_sweep(tmp_path, version: int = 2):
    """A planned sweep whose sweep.json says its measures' settings the older way
    (``metrics.transitions_points: 25``, ``metrics.jacobian_points: 50``), as written before they
    moved to ``measure_settings``; ``version`` 1: with that identity version and hash."""
    import json

    from sweep.driver import plan_only
    from workers.results.layout import SWEEP_FILE

    out = tmp_path / f"s{version}"
    plan_only(compose(["trials=2", f"out={out}"]))
    doc = json.loads((out / SWEEP_FILE).read_text())
    doc["config"]["metrics"].update(transitions_points=25, jacobian_points=50)
    doc["config"]["measure_settings"] = {}
    if version == 1:
        doc["identity_version"] = 1
        doc["identity_hash"] = from_dict(json.loads(json.dumps(doc["config"]))).identity_hash(1)
    (out / SWEEP_FILE).write_text(json.dumps(doc))
    return out


def _settings(cfg):
    """(transitions points, k, Jacobian train points, test points) the trials get: the
    settings other than the defaults, else the measure's registered default."""
    from workers.measures import REGISTRY

    s = cfg.metric_spec().measure_settings()

    def get(m, k):
        return s.get(m, {}).get(k, REGISTRY[m].settings[k])

    return (get("transitions_test", "points"), get("transitions_test", "k"),
            get("jacobian_norm_train", "points"), get("jacobian_norm_test", "points"))


@pytest.mark.parametrize("version", [1, 2])
def test_a_stored_alias_gives_way_to_its_setting_given_by_its_own_name(tmp_path, version):
    """A sweep.json that says its settings with the older ``metrics.*`` names, resumed with one
    setting given by its own name: that setting takes the command line's value, every other
    stored setting keeps its value (not "set twice", not the default), and a version-1 sweep
    (whose identity hash covers these settings) is still recognised."""
    from sweep.driver import stored_config
    from workers.measures import REGISTRY

    out = _old_style_sweep(tmp_path, version)
    k0 = REGISTRY["transitions_test"].settings["k"]
    assert _settings(stored_config(out)) == (25, k0, 50, 50)
    for given, want in (
            (["measure_settings.transitions_test.points=60"], (60, k0, 50, 50)),
            (["measure_settings.transitions_test={points: 60}"], (60, k0, 50, 50)),
            (["measure_settings.transitions_test={k: 5}"], (25, 5, 50, 50)),
            (["measure_settings.transitions_test.k=5"], (25, 5, 50, 50)),
            (["measure_settings.jacobian_norm_test.points=100"], (25, k0, 50, 100)),
            (["measure_settings.jacobian_norm.points=100"], (25, k0, 100, 100)),
            (["metrics.transitions_points=40"], (40, k0, 50, 50)),  # the alias itself
            (["metrics.jacobian_points=70", "measure_settings.transitions_test.k=6"],
             (25, 6, 70, 70))):
        assert _settings(stored_config(out, given)) == want, given
