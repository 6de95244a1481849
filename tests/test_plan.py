import itertools

import pyarrow.parquet as pq
import pytest

from sweep.config import compose
from sweep.plan import manifest_table, plan_trials


@pytest.mark.parametrize("sampler", ["random", "qmc"])
def test_same_config_and_seed_same_trials(sampler):
    a = plan_trials(compose([f"plan.sampler={sampler}"]))
    b = plan_trials(compose([f"plan.sampler={sampler}"]))
    assert [s.trial_id for s in a] == [s.trial_id for s in b]
    c = plan_trials(compose([f"plan.sampler={sampler}", "seed=1"]))
    assert [s.trial_id for s in a] != [s.trial_id for s in c]


def test_demo_covers_every_activation_optimizer_pair_and_ids_are_distinct():
    specs = plan_trials(compose([]))
    assert len(specs) == 30 and len({s.trial_id for s in specs}) == 30
    pairs = {(s.activation, s.optimizer) for s in specs}
    cfg = compose([])
    assert pairs == set(itertools.product(cfg.space.activation, cfg.space.optimizer))


def test_values_come_from_the_space_and_lbfgs_is_full_batch():
    cfg = compose(["trials=40"])
    for s in plan_trials(cfg):
        assert s.width in cfg.space.width and s.depth in cfg.space.depth
        assert s.init_scale in cfg.space.init_scale and s.seed in cfg.space.seed
        if s.optimizer == "lbfgs":
            assert s.batch_size is None and s.lr == cfg.train.lbfgs.lr
        else:
            assert s.batch_size in cfg.space.batch_size and s.lr in cfg.space.lr


def test_small_space_gives_only_its_distinct_configurations():
    cfg = compose(["space.width=8", "space.depth=2", "space.activation=relu", "space.optimizer=sgd",
                   "space.lr=[0.1,0.01]", "space.batch_size=32", "space.init_scale=1",
                   "space.seed=1", "plan.grid=[]", "trials=10"])
    specs = plan_trials(cfg)
    assert sorted(s.lr for s in specs) == [0.01, 0.1]


def test_trial_id_is_a_hash_of_the_full_spec():
    cfg = compose([])
    a = plan_trials(cfg)[0]
    b = plan_trials(compose(["train.steps=1999"]))[0]
    assert (a.width, a.depth, a.activation, a.optimizer) == (b.width, b.depth, b.activation, b.optimizer)
    assert a.trial_id != b.trial_id
    # root and download are plumbing: they do not change the id
    c = plan_trials(compose(["dataset.root=/elsewhere"]))[0]
    assert c.trial_id == a.trial_id
    from workers.spec import TrialSpec
    assert TrialSpec.from_json(a.canonical()) == a


def test_manifest(tmp_path):
    specs = plan_trials(compose([]))
    pq.write_table(manifest_table(specs), tmp_path / "plan.parquet")
    t = pq.read_table(tmp_path / "plan.parquet").to_pandas()
    assert t["trial_id"].tolist() == [s.trial_id for s in specs]
    assert t.loc[t.optimizer == "lbfgs", "batch_size"].isna().all()
