"""weight_decay (Jiang et al. 2020's varied hyperparameter), added through its one declaration
(workers.results.hyperparameters): coupled L2 in training, sampled by the planner, recorded,
and left out of the identity at its default 0 so that no existing trial or sweep changes id."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from sweep.config import ConfigError, compose
from sweep.plan import plan_trials
from workers.data import load_data
from workers.models import build_mlp
from workers.results.hyperparameters import BY_NAME, SPACE_KEYS, STATISTICS_HYPERPARAMETERS
from workers.results.record import SUMMARY_COLUMNS
from workers.results.spec import DataSpec, TrainSpec, TrialSpec
from workers.train import train_model


def _spec(**train) -> TrialSpec:
    return TrialSpec(data=DataSpec("digits", train_size=64, test_size=10), width=16, depth=2,
                     activation="tanh", optimizer="sgd", lr=0.5, batch_size=64, init_scale=1.0,
                     seed=3, train=TrainSpec(steps=1, early_stop=False, **train))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_one_step_is_w_minus_lr_times_gradient_plus_lambda_w(optimizer):
    """One step from zero momentum: w - lr (g + lambda w), g the cross-entropy's gradient on
    the batch (here the whole 64-point train set), computed independently."""
    lam, lr = 0.1, 0.5
    data = load_data("digits", train_size=64, test_size=10)
    m1, m2 = (build_mlp(64, 16, 2, 10, "tanh", seed=3) for _ in range(2))
    out = train_model(m1, data, optimizer, lr, 64,
                      TrainSpec(steps=1, early_stop=False, weight_decay=lam), seed=0)
    assert out.steps == 1 and not out.diverged
    loss = F.cross_entropy(m2(data.x_train.flatten(1)), data.y_train)
    grads = torch.autograd.grad(loss, list(m2.parameters()))
    for p1, p2, g in zip(m1.parameters(), m2.parameters(), grads):
        torch.testing.assert_close(p1, p2 - lr * (g + lam * p2))


def test_zero_weight_decay_trains_bit_for_bit_as_before():
    data = load_data("digits", train_size=128, test_size=10)
    for optimizer in ("momentum", "adam", "lbfgs"):
        nets = []
        for train in (TrainSpec(steps=5, check_every=5), TrainSpec(steps=5, check_every=5,
                                                                   weight_decay=0.0)):
            m = build_mlp(64, 16, 3, 10, "relu", seed=1)
            train_model(m, data, optimizer, 1.0 if optimizer == "lbfgs" else 0.01,
                        None if optimizer == "lbfgs" else 32, train, seed=1)
            nets.append(m)
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(a, b)


def test_lbfgs_minimises_the_penalised_loss():
    """L-BFGS adds (lambda / 2) ||w||^2 to its closure's loss: a large lambda shrinks the
    weights towards 0 against the plain run's."""
    data = load_data("digits", train_size=128, test_size=10)
    norms = {}
    for lam in (0.0, 1.0):
        m = build_mlp(64, 16, 2, 10, "relu", seed=1)
        out = train_model(m, data, "lbfgs", 1.0, None,
                          TrainSpec(steps=20, check_every=10, early_stop=False, weight_decay=lam),
                          seed=1)
        assert not out.diverged
        norms[lam] = float(sum(p.detach().pow(2).sum() for p in m.parameters()))
    assert norms[1.0] < 0.5 * norms[0.0]


def test_identity_unchanged_at_zero_changed_at_a_value():
    s = _spec()
    text = s.canonical()
    assert "weight_decay" not in text  # as every trial planned before it existed
    assert _spec(weight_decay=0.0).trial_id == s.trial_id
    other = _spec(weight_decay=1e-3)
    assert other.trial_id != s.trial_id and '"weight_decay":0.001' in other.canonical()
    # a version-2 text written before weight_decay existed reads back with 0 and the same id
    back = TrialSpec.from_json(text)
    assert back.train.weight_decay == 0.0 and back.trial_id == s.trial_id
    assert TrialSpec.from_json(other.canonical()).trial_id == other.trial_id
    # the version-1 identity (legacy ids) leaves it out at 0 as well
    assert "weight_decay" not in s.canonical_v1()


def test_the_sweep_identity_keeps_a_default_weight_decay_out():
    base = compose([])
    assert base.space.weight_decay == (0.0,)
    assert compose(["space.weight_decay=[0]"]).identity_hash() == base.identity_hash()
    assert "weight_decay" not in json.dumps(base.identity())
    assert compose(["space.weight_decay=[0,1e-3]"]).identity_hash() != base.identity_hash()
    assert compose(["space.weight_decay=[1e-4]"]).identity_hash() != base.identity_hash()


def test_weight_decay_is_checked_by_its_declaration():
    h = BY_NAME["weight_decay"]
    assert "weight_decay" in SPACE_KEYS and "weight_decay" in STATISTICS_HYPERPARAMETERS
    assert h.default == 0.0 and "weight_decay" in SUMMARY_COLUMNS
    for bad, words in (("[-1e-4]", "space.weight_decay: must be >= 0.0, got -0.0001"),
                       ("[a]", "space.weight_decay: expected a number, got 'a'"),
                       ("[0,0]", "space.weight_decay: repeated values in [0.0, 0.0]")):
        with pytest.raises(ConfigError) as e:
            compose([f"space.weight_decay={bad}"])
        assert str(e.value) == words
    cfg = compose(["space.weight_decay=[0,1e-3]", "plan.grid=[weight_decay]"])
    assert cfg.plan.grid == ("weight_decay",)


def test_lbfgs_trials_take_the_drawn_weight_decay():
    cfg = compose(["trials=4", "space.optimizer=[sgd,lbfgs]", "space.weight_decay=[0,1e-3]",
                   "plan.grid=[optimizer,weight_decay]"])
    got = {(s.optimizer, s.train.weight_decay) for s in plan_trials(cfg)}
    assert got == {("sgd", 0.0), ("sgd", 1e-3), ("lbfgs", 0.0), ("lbfgs", 1e-3)}


def test_a_sweep_samples_weight_decay_end_to_end(tmp_path):
    """Plan a sweep over weight_decay in {0, 1e-3} (its trials run in this process, as a Ray
    task would run them), then: the manifest and every record hold the value, the trial at 0
    has the id a sweep without the key gives, and the trained weights differ."""
    from analysis import load_results
    from sweep.driver import plan_only, read_plan
    from workers.models import load_model
    from workers.results.spec import RunContext
    from workers.results.storage import store
    from workers.trial import run_trial

    out = tmp_path / "s"
    common = ["dataset.train_size=128", "dataset.test_size=32", "train.steps=30",
              "train.check_every=10", "train.early_stop=false", "space.width=[16]",
              "space.activation=[relu]", "space.optimizer=[sgd]", "space.lr=[0.05]", "space.batch_size=[32]",
              "metrics.transitions_points=0", "measures=[jacobian_norm_test]"]
    cfg = compose(common + [f"out={out}", "trials=2", "space.weight_decay=[0,1e-3]",
                            "plan.grid=[weight_decay]"])
    plan_only(cfg)
    specs = read_plan(store(str(out)))
    assert sorted(s.train.weight_decay for s in specs) == [0.0, 1e-3]
    manifest = pq.read_table(out / "plan.parquet").to_pandas()
    assert sorted(manifest.weight_decay) == [0.0, 1e-3]
    plain = {s.trial_id for s in plan_trials(compose(common + ["trials=1"]))}
    assert plain == {s.trial_id for s in specs if s.train.weight_decay == 0.0}
    for s in specs:
        assert run_trial(s, RunContext(str(out), save_weights=True))["status"] == "ok"
    df = load_results(out).set_index("trial_id")
    for s in specs:
        assert df.loc[s.trial_id, "weight_decay"] == s.train.weight_decay
    a, b = (load_model(str(out), s.trial_id) for s in sorted(specs, key=lambda s: s.train.weight_decay))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # the decayed network is the smaller one
    assert sum(float(q.detach().pow(2).sum()) for q in b.parameters()) < \
        sum(float(p.detach().pow(2).sum()) for p in a.parameters())


def test_records_written_before_weight_decay_read_it_as_zero(tmp_path):
    """An older record (the frozen schema-2 sweep) has no weight_decay column: it reads as 0,
    the value its trials trained with, not null (so old and new trials of a resumed sweep are
    one configuration in the statistics)."""
    import shutil
    from pathlib import Path

    from analysis import load_results

    d = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "schema2_sweep", d)
    df = load_results(d)
    assert len(df) == 3 and (df.weight_decay == 0.0).all()


def test_old_stored_config_completes_from_the_defaults():
    """A stored sweep.json written before keys existed is completed by merging it over the
    composed defaults (conf/): its identity and values are those it was launched with."""
    from pathlib import Path

    from sweep.config import completed, defaults, from_dict

    doc = json.loads((Path(__file__).parent / "fixtures" / "schema2_sweep" / "sweep.json")
                     .read_text())
    cfg = from_dict(doc["config"])
    assert cfg.identity_hash(1) == doc["identity_hash"]
    d = defaults("digits")
    assert cfg.train.checkpoint_every == d["train"]["checkpoint_every"]
    assert cfg.resources.cpu_flops == d["resources"]["cpu_flops"]
    assert cfg.space.weight_decay == (0.0,) and cfg.plan.infeasible == "refuse"
    # measures: what their absence meant then (the record's three), not today's default (all)
    assert cfg.measures == ("jacobian_norm_train", "jacobian_norm_test", "transitions_test")
    c = completed(doc["config"])
    assert c["space"]["width"] == doc["config"]["space"]["width"] and "train_size" in c["space"]
    assert from_dict(c) == cfg
    assert replace(cfg, out=None).identity_hash(1) == doc["identity_hash"]
