"""Fig. 4's paired trials: planned whole, differing in exactly one factor, run complete."""

import json
from pathlib import Path

import pytest

from analysis import load_pairs, load_results
from sweep.config import ConfigError, compose
from sweep.driver import launch
from sweep.plan import plan_pairs

SMALL = ["experiment=factors", "dataset=digits", "trials=3", "train.steps=200",
         "train.check_every=100", "space.width=[16,32]", "space.depth=[2,3]", "space.batch_size=[32,64]",
         "dataset.train_size=200", "dataset.test_size=60", "metrics.transitions_points=5",
         "progress=false", "figure=false",
         "measures=[jacobian_norm_test,transitions_test]"]  # Fig. 4's; the rest are not tested here
# where each factor lives in a spec's canonical JSON; lbfgs also drops lr/batch_size
WHERE = {"random_labels": ("data", "random_labels"), "augment": ("data", "augment"),
         "activation": (None, "activation"), "optimizer": (None, "optimizer")}


def strip(spec: dict, factor: str) -> dict:
    d = json.loads(json.dumps(spec))
    sec, key = WHERE[factor]
    (d[sec] if sec else d).pop(key)
    if factor == "optimizer":  # and the training settings that apply to one optimizer only
        d.pop("lr"), d.pop("batch_size")
        d["train"] = {k: d["train"][k] for k in ("steps", "early_stop", "check_every")}
    return d


def test_pairs_differ_in_exactly_their_factor_and_are_deterministic():
    cfg = compose(SMALL)
    specs, pairs = plan_pairs(cfg)
    again_specs, again = plan_pairs(compose(SMALL))
    assert pairs.equals(again) and [s.trial_id for s in specs] == [s.trial_id for s in again_specs]
    by_id = {s.trial_id: json.loads(s.canonical()) for s in specs}
    rows = pairs.to_pylist()
    assert len(rows) == 3 * 4 and {r["factor"] for r in rows} == set(WHERE)
    # many bases: two that differ only in activation give one activation pair, listed once
    many = plan_pairs(compose(SMALL + ["trials=60"]))[1].to_pylist()
    assert len({r["pair_id"] for r in many}) == len(many)
    for r in rows:
        a, b = by_id[r["trial_a"]], by_id[r["trial_b"]]
        assert a != b and strip(a, r["factor"]) == strip(b, r["factor"])
        if r["factor"] == "optimizer":
            assert b["optimizer"] == "lbfgs" and a["optimizer"] != "lbfgs" and b["batch_size"] is None
        if r["factor"] == "activation":
            assert (a["activation"], b["activation"]) == ("relu", "hardsigmoid")
        if r["factor"] in ("random_labels", "augment"):
            assert (a["data"][r["factor"]], b["data"][r["factor"]]) == (False, True)


def test_factors_need_a_minibatch_optimizer():
    with pytest.raises(ConfigError, match="plan.factors"):
        compose(SMALL + ["space.optimizer=lbfgs"])
    with pytest.raises(ConfigError, match="plan.factors: unknown value 'width'"):
        compose(SMALL + ["plan.factors=[width]"])


@pytest.mark.slow
def test_scaled_down_factors_sweep_completes_with_every_pair_whole(ray_local, tmp_path):
    out = tmp_path / "factors"
    launch(compose(SMALL + [f"out={out}"]))
    pairs = load_pairs(out)
    assert len(pairs) == 12
    assert pairs["status_a"].notna().all() and pairs["status_b"].notna().all()
    assert set(pairs["status_a"]) | set(pairs["status_b"]) <= {"ok", "diverged"}
    ok = pairs[(pairs.status_a == "ok") & (pairs.status_b == "ok")]
    assert len(ok) >= 10 and ok[["gen_gap_a", "gen_gap_b", "jacobian_norm_test_a"]].notna().all().all()
    assert len(load_results(out)) == len(set(pairs.trial_a) | set(pairs.trial_b))
    check_readme_analysis_examples(out)


def readme_block(tag: str) -> str:
    """The README's python block after the marker ``<!-- tested: tests/test_factors.py TAG -->``."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    after = text.split(f"<!-- tested: tests/test_factors.py {tag} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def check_readme_analysis_examples(out):
    """The README's analysis examples, run on a finished factors sweep."""
    import matplotlib

    matplotlib.use("Agg")
    # the README's groupby finds exactly the planner's random_labels pairs
    ns = {}
    exec(readme_block("pairs-groupby").replace('"runs/factors-<hash>"', repr(str(out))), ns)
    got = ns["pairs"]["gen_gap"]
    ref = load_pairs(out)
    ref = ref[(ref.factor == "random_labels") & ref.gen_gap_a.notna() & ref.gen_gap_b.notna()]
    assert len(got) == len(ref) == 3
    assert sorted(got[False]) == sorted(ref.gen_gap_a) and sorted(got[True]) == sorted(ref.gen_gap_b)

    # every figure of a factors sweep, from all trials
    from sweep.cli import main
    assert main(["report", str(out), "--train-acc", "0", "--bootstrap", "0"]) == 0
    assert (out / "report" / "fig4_factor_pairs.svg").is_file()

    # DuckDB on the compacted copy and on the per-trial files agrees with load_results
    assert main(["compact", str(out)]) == 0
    ns = {}
    exec(readme_block("duckdb").replace('"runs/factors-<hash>"', repr(str(out))), ns)
    exec(readme_block("duckdb-compacted").replace('"runs/factors-<hash>"', repr(str(out))), {})
    df = load_results(out)
    q = ns["duckdb"].sql(
        f"SELECT count(*), sum(gen_gap) FROM read_parquet('{out}/compacted/results/*/*.parquet', "
        "hive_partitioning = true) WHERE status = 'ok'").fetchall()[0]
    ok = df[df.status == "ok"]
    assert q[0] == len(ok) and q[1] == pytest.approx(ok.gen_gap.sum())
    n_files = ns["duckdb"].sql(f"SELECT count(*) FROM read_parquet('{out}/trials/*.parquet')").fetchall()[0][0]
    assert n_files == len(df)
    # a live sweep: a stray file and a truncated one in trials/ fail the glob, not the README's form
    some = sorted((out / "trials").glob("*.parquet"))[0]
    (out / "trials" / "zz-stray.parquet").write_bytes(b"not parquet")
    (out / "trials" / "zz-truncated.parquet").write_bytes(some.read_bytes()[:200])
    with pytest.raises(Exception):
        ns["duckdb"].sql(f"SELECT count(*) FROM read_parquet('{out}/trials/*.parquet')").fetchall()
    ns = {}
    exec(readme_block("duckdb").replace('"runs/factors-<hash>"', repr(str(out))), ns)
    got = dict(ns["con"].sql("SELECT status, count(*) FROM trials GROUP BY ALL").fetchall())
    assert got == df.status.value_counts().to_dict()
    # the measures table: every value the trials wrote, the same as load_measures
    from analysis import load_measures

    long = load_measures(out)
    got = dict(ns["con"].sql("SELECT measure, count(*) FROM measures GROUP BY ALL").fetchall())
    assert got == long.measure.value_counts().to_dict() and sum(got.values()) > 0
