"""Smaller frictions a new user met (issue #26, item 5): the plan says when seeds are unbalanced
across configurations, the README's DuckDB block runs on a sweep never compacted, a SWEEP_DIR
that does not exist is named as such, argparse errors are one line, and an unknown measure
gets its closest names in one short line."""

import ast
import collections
import dataclasses
import math
import re

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from sweep.cli import main
from sweep.config import ConfigError, compose
from sweep.plan import plan_trials, seed_note
from tests.test_factors import readme_block
from workers.measures import REGISTRY
from workers.results.measure_values import Outcome
from workers.results.measure_table import write_outcome
from workers.results.record import SUMMARY_COLUMNS, write_trial
from workers.results.layout import SWEEP_FILE


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# --- 1. seed balance ---------------------------------------------------------------------------

# the case: the demo's grid on two activations, three seeds drawn, trials=90
UNEVEN = ["space.activation=[relu,tanh]", "space.seed=[1,2,3]", "trials=90"]


def seeds_per_configuration(specs) -> collections.Counter:
    """Configuration (the trial with its seed set to 0, by id) -> number of its trials; counted
    from the specs themselves, not from the planner's hyperparameter table."""
    return collections.Counter(dataclasses.replace(s, seed=0).trial_id for s in specs)


def test_the_plan_says_when_configurations_get_unequal_numbers_of_seeds():
    cfg = compose(UNEVEN)
    specs = plan_trials(cfg)
    per = seeds_per_configuration(specs)
    assert len(specs) == 90 and len(per) == 36
    assert collections.Counter(per.values()) == {3: 18, 2: 18}  # the numbers
    note = seed_note(cfg, specs)
    assert note is not None and "\n" not in note
    assert "the 90 planned trials give their 36 configurations unequal numbers of seeds" in note
    assert "of the 3 in space.seed: 18 have 3, 18 have 2" in note
    # the whole space by hand: 2 activations x (4 mini-batch optimizers x 2 lr + L-BFGS) x 2
    # widths = 36 configurations, x 3 seeds
    whole = 2 * (4 * 2 + 1) * 2 * 3
    assert f"ask for trials={whole} (the whole space)" in note
    full = plan_trials(compose(UNEVEN[:-1] + [f"trials={whole}"]))
    assert set(seeds_per_configuration(full).values()) == {3}
    assert len(seeds_per_configuration(full)) == 36
    assert seed_note(compose(UNEVEN[:-1] + [f"trials={whole}"]), full) is None
    # the other way it names: seed last in plan.grid, a trials count that balances
    m = re.search(r"or plan\.grid=\[([a-z_,]+)\] with trials=(\d+) \((\d+) configurations", note)
    assert m and m.group(1).split(",")[-1] == "seed", note
    alt = compose(UNEVEN[:-1] + [f"plan.grid=[{m.group(1)}]", f"trials={m.group(2)}"])
    specs = plan_trials(alt)
    per = seeds_per_configuration(specs)
    assert set(per.values()) == {3} and len(per) == int(m.group(3)) == 30
    assert seed_note(alt, specs) is None


def test_the_seed_note_needs_several_seeds_and_names_only_what_balances():
    demo = compose([])  # one seed: nothing to say
    assert seed_note(demo, plan_trials(demo)) is None
    # lr is drawn (not in the grid): seed in plan.grid would not give each configuration every
    # seed, so only the whole space is named
    cfg = compose(["space.seed=[1,2]", "plan.grid=[activation,optimizer,width]", "trials=60"])
    specs = plan_trials(cfg)
    assert len(set(seeds_per_configuration(specs).values())) > 1
    note = seed_note(cfg, specs)
    assert note is not None and "plan.grid=" not in note
    assert f"trials={5 * (4 * 2 + 1) * 2 * 2} (the whole space)" in note


def test_sweep_plan_prints_the_seed_note(tmp_path, capsys):
    assert main(["plan", *UNEVEN, f"out={tmp_path / 's'}"]) == 0
    err = capsys.readouterr().err
    assert "unequal numbers of seeds" in err and "trials=108" in err


# --- 2. the README's DuckDB blocks ----------------------------------------------------------


def _live_sweep(d, rng) -> None:
    """A sweep as trials leave it (no compacted copy): two data sets x two activations x 4
    trials, one failed, each with two measure values."""
    n = 0
    for ds in ("digits", "mnist"):
        for act in ("relu", "tanh"):
            for k in range(4):
                n += 1
                tid = f"t{n:03d}"
                jac = float(rng.lognormal(0.0, 0.7))
                row = {c: None for c in SUMMARY_COLUMNS}
                row.update(trial_id=tid, status="failed" if n == 5 else "ok", dataset=ds,
                           width=8 * (1 + k), depth=3, activation=act, optimizer="sgd", lr=0.1,
                           batch_size=32, init_scale=1.0, seed=1, steps=10, train_acc=1.0,
                           gen_gap=0.1 * math.log(jac) + float(rng.normal(0, 0.02)),
                           jacobian_norm_test=jac, spec='{"id": "%s"}' % tid)
                write_trial(d, row, [])
                write_outcome(d, tid, Outcome("params", 100.0 + n, 1, {}, 0.01))
                write_outcome(d, tid, Outcome("l2", 0.5 * n, 1, {}, 0.01))
    (d / SWEEP_FILE).write_text('{"identity_hash": "x", "config": {}}')


def _run_block(tag: str, sweep) -> tuple[dict, list]:
    """Execute the README block ``tag`` on ``sweep``; return its namespace and the values of
    its ``.df()`` expressions, in order."""
    code = readme_block(tag).replace('"runs/factors-<hash>"', repr(str(sweep)))
    ns, values = {}, []
    for stmt in ast.parse(code).body:
        part = ast.get_source_segment(code, stmt)
        if isinstance(stmt, ast.Expr) and part.endswith(".df()"):
            values.append(eval(part, ns))
        else:
            exec(part, ns)
    return ns, values


def _by_hand(df):
    """Per (dataset, activation): count and Pearson r of ln(jacobian_norm_test) and gen_gap of
    the ok trials, with numpy."""
    ok = df[df.status == "ok"]
    out = {}
    for key, g in ok.groupby(["dataset", "activation"]):
        out[key] = (len(g), np.corrcoef(np.log(g.jacobian_norm_test), g.gen_gap)[0, 1])
    return out


def _as_dict(frame):
    return {(r.dataset, r.activation): (r.n, r.r) for r in frame.itertuples()}


def test_readme_duckdb_block_works_before_compact_and_the_compacted_one_after(tmp_path):
    import pandas as pd

    d = tmp_path / "s"
    _live_sweep(d, np.random.default_rng(4))
    assert not (d / "compacted").exists()
    _, values = _run_block("duckdb", d)  # a live sweep: no compact needed
    df = pd.concat([pq.read_table(p).to_pandas() for p in sorted((d / "trials").glob("*.parquet"))])
    want = _by_hand(df)
    assert len(want) == 4 and sum(n for n, _ in want.values()) == 15
    got = _as_dict(values[0])
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0] and got[k][1] == pytest.approx(want[k][1], abs=1e-9)
    measures = values[-1].set_index("measure")  # (measure, count, mean value)
    assert measures.loc["params"].iloc[0] == 16
    assert measures.loc["l2"].iloc[1] == pytest.approx(0.5 * np.mean(range(1, 17)))
    # the compacted block: fails as the README says before `sweep compact`, then agrees
    with pytest.raises(duckdb.IOException, match="No files found that match the pattern"):
        _run_block("duckdb-compacted", d)
    assert main(["compact", str(d)]) == 0
    _, values = _run_block("duckdb-compacted", d)
    got = _as_dict(values[0])
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0] and got[k][1] == pytest.approx(want[k][1], abs=1e-9)


# --- 3. a SWEEP_DIR that does not exist ------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "resume", "report", "measure", "compact"])
def test_a_sweep_dir_that_does_not_exist_is_named_so(tmp_path, capsys, command):
    missing = tmp_path / "nope"
    assert main([command, str(missing)]) == 2
    err = _err_lines(capsys)
    assert err == [f"sweep: error: SWEEP_DIR: {missing} does not exist; allowed: a sweep "
                   "directory (the one sweep launch, plan or slurm printed)"]
    assert not missing.exists()
    # a directory that exists but holds no sweep: still said as before
    assert main([command, str(tmp_path)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "is not a sweep directory" in err[0]


# --- 4. argparse errors: one line, exit 2 ---------------------------------------------------


@pytest.mark.parametrize("argv, line", [
    ([], "sweep: error: the following arguments are required: COMMAND; allowed: sweep COMMAND, "
         "COMMAND one of launch, plan, show, resume, measure, status, report, compact, slurm "
         "(sweep --help)"),
    (["lunch"], "sweep: error: COMMAND: unknown 'lunch' (closest: launch); allowed: launch, "
                "plan, show, resume, measure, status, report, compact, slurm"),
    (["status"], "sweep: error: the following arguments are required: SWEEP_DIR; "
                 "allowed: sweep status SWEEP_DIR (sweep status --help)"),
    (["status", "a", "b"], "sweep: error: unrecognized arguments: b; allowed: sweep "
                           "status SWEEP_DIR (sweep status --help)"),
    (["report", "x", "--bootstrap", "q"], "sweep: error: --bootstrap: 'q'; allowed: an "
                                          "integer"),
    (["report", "x", "--train-acc", "high"], "sweep: error: --train-acc: 'high'; "
                                             "allowed: a number"),
    (["slurm", "trials=4", "--nodes", "two"], "sweep: error: --nodes: 'two'; allowed: an "
                                              "integer"),
    (["launch", "--trials=4"], "sweep: error: unrecognized arguments: --trials=4; "
                               "allowed: sweep launch [KEY=VALUE ...] (sweep launch --help)"),
])
def test_argparse_errors_are_one_line_naming_what_is_allowed(capsys, argv, line):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert _err_lines(capsys) == [line]


def test_argparse_errors_with_a_long_usage_stay_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "x", "--train-acc"])
    assert e.value.code == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and err[0].startswith("sweep: error: --train-acc: expected one "
                                               "argument; allowed: sweep report ")
    assert "--bootstrap BOOTSTRAP" in err[0] and "SWEEP_DIR" in err[0] and "[-h]" not in err[0]


def test_help_is_still_argparses_own(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sweep report") and "--bootstrap BOOTSTRAP" in out
    assert len(out.splitlines()) > 10


# --- 5. an unknown measure: the closest names, in one short line -----------------------------


@pytest.mark.parametrize("given, closest", [
    ("sharpnes", "closest: sharpness, expected_sharpness"),
    ("fisher_rau", "closest: fisher_rao"),
    ("nope", "no close name"),
])
def test_an_unknown_measure_names_the_closest_ones_in_one_short_line(given, closest):
    with pytest.raises(ConfigError) as e:
        compose([f"measures=[{given}]"])
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 200, (len(msg), msg)
    assert msg.startswith(f"measures: unknown ['{given}'] ({closest}); allowed: all or a "
                          "measure that sweep show --keys lists")


def test_the_full_list_is_where_the_line_says(capsys):
    """Every built-in measure (one the project's own modules register: other tests in this
    process register user measures too) is in `sweep show --keys`'s measures line."""
    assert main(["show", "--keys"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("measures "))
    listed = line.split("allowed: ", 1)[1]
    builtin = [n for n, m in REGISTRY.items() if m.fn.__module__.startswith("workers.")]
    assert len(builtin) >= 40
    missing = [n for n in builtin if not re.search(rf"\b{n}\b", listed)]
    assert not missing, missing


def test_a_measure_named_twice_or_reserved_is_one_short_line():
    for given, words in (("[l2,l2]", "measures: ['l2'] named twice; allowed: each measure once"),
                         ("[gen_gap]", "measures: ['gen_gap'] reserved")):
        with pytest.raises(ConfigError) as e:
            compose([f"measures={given}"])
        assert str(e.value).startswith(words) and len(str(e.value)) < 200


def test_a_mistyped_statistic_names_the_closest(tmp_path, capsys):
    """`sweep report DIR --rank-by kendal`: one line naming the closest statistic, exit 2."""
    from analysis.stats.registry import STATISTICS

    out = tmp_path / "s"
    assert main(["plan", "trials=2", f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--rank-by", "kendal"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(closest: kendall)" in err
    assert err.endswith("allowed: " + ", ".join(STATISTICS)), err
