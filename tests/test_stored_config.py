"""A sweep's stored configuration (sweep.json) round-trips: it holds the resolved values, and
every command that reads it back (resume, measure, status, report and its relaunch command)
takes them as plain data, never as interpolations again (issue #22 item 8)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.config import ConfigError, compose

# A user's measure module under a directory named ``${m}``: one path per test session (the
# registry refuses one measure name registered from two files)
MODULE = '''from workers.measures import register


@register("weight_abs_sum", source="test: the sum of |w| over every layer", needs=("model",))
def weight_abs_sum(inputs):
    return float(sum(p.detach().double().abs().sum() for p in inputs.model.parameters()))
'''
SMALL = ["trials=1", "dataset.train_size=100", "dataset.test_size=40", "train.steps=20",
         "train.check_every=10", "space.width=[8]", "space.depth=[2]", "space.batch_size=[32]",
         "metrics.transitions_points=2", "progress=false", "figure=false",
         "measures=[jacobian_norm_test]"]


@pytest.fixture(scope="session")
def moddir(tmp_path_factory) -> Path:
    """A directory really named ``${m}`` holding lab.py (MODULE); once per test process (a
    second copy, made when this module's tests do not run one after the other, would register
    MODULE's measure again from another path: an error)."""
    d = tmp_path_factory.mktemp("mods") / "${m}"
    d.mkdir()
    (d / "lab.py").write_text(MODULE)
    return d


def _literal_sweep(tmp_path: Path, moddir: Path) -> tuple[Path, str, str]:
    """A planned sweep whose dataset.root (a nested key) and measure_modules (a list element)
    hold a literal ``${...}``, written as Hydra's escape on the command line. Returns (sweep
    directory, the literal root, the literal module path)."""
    root = f"{tmp_path}/data/${{x}}"
    module = f"{moddir}/lab.py"
    out = tmp_path / "s"
    assert main(["plan", *SMALL, f"out={out}", f"dataset.root={tmp_path}/data/\\${{x}}",
                 f"measure_modules=[\"{moddir.parent}/\\${{m}}/lab.py\"]"]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["config"]["dataset"]["root"] == root  # stored resolved: the literal itself
    assert doc["config"]["measure_modules"] == [module]
    return out, root, module


def test_a_stored_literal_reads_back_unchanged(tmp_path, moddir, capsys):
    from sweep.driver import stored_config

    out, root, module = _literal_sweep(tmp_path, moddir)
    capsys.readouterr()
    for command in ("resume", "measure"):
        cfg = stored_config(out, command=command)
        assert cfg.dataset.root == root and cfg.measure_modules == (module,)
    # overrides of a stored sweep: Hydra's grammar as on launch; their own ${...} resolved
    cfg = stored_config(out, ["dataset.root=/new/\\${y}", "resources.max_in_flight=3"])
    assert cfg.dataset.root == "/new/${y}" and cfg.resources.max_in_flight == 3
    assert cfg.measure_modules == (module,)  # not overridden: stays as stored
    home = stored_config(out, ["dataset.root=${oc.env:HOME}/d"]).dataset.root
    assert home == str(Path.home()) + "/d"
    cfg = stored_config(out, ['dataset.root="/a b/\\${z}"',
                              f"measure_modules=[\"{moddir.parent}/\\${{m}}/lab.py\"]"])
    assert cfg.dataset.root == "/a b/${z}" and cfg.measure_modules == (module,)
    for bad, words in (("dataset.root=${nope}", ("dataset.root", "cannot resolve", "\\${")),
                       ("measures=a,b", ("measures", "[a,b]")),
                       ("cluster=5", ("cluster", "section of keys"))):
        with pytest.raises(ConfigError) as e:
            stored_config(out, [bad])
        assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
        assert main(["resume", str(out), bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["/data/${x}", "${a}${b}", "a\\${x}", "x y ${y}", "$", "$x{}"])
def test_the_relaunch_command_writes_a_literal_so_that_it_composes_back(value):
    """The report's relaunch command (sweep.show.launch_command) escapes a stored ``${`` (and
    backslashes before it) so that composing the command gives the stored value back."""
    from dataclasses import asdict

    from sweep.show import launch_command

    cfg = compose(["trials=3", "dataset.root=\"" + _hydra_escape(value) + "\"",
                   "measure_modules=[]"])
    assert cfg.dataset.root == value
    stored = json.loads(json.dumps(asdict(cfg)))
    command, exact = launch_command(stored)
    assert exact, command
    again = compose(shlex.split(command)[2:])
    assert again.dataset.root == value and again.identity_hash() == cfg.identity_hash()


def _hydra_escape(v: str) -> str:
    """Hand-written escapes of the cases above (the independent side of the test)."""
    return {"/data/${x}": "/data/\\${x}", "${a}${b}": "\\${a}\\${b}",
            "a\\${x}": "a\\\\\\${x}", "x y ${y}": "x y \\${y}", "$": "$",
            "$x{}": "$x{}"}[v]


@pytest.mark.slow
def test_resume_measure_status_report_read_the_literal_back(ray_local, tmp_path, moddir,
                                                           capsys):
    """The issue's example end to end: plan with a literal ``${``, then resume, measure (a
    measure of the module whose path holds ``${m}``), status and report succeed, and the
    report's relaunch command composes the same sweep with the literal intact."""
    import html
    import re

    from analysis import load_results

    out, root, module = _literal_sweep(tmp_path, moddir)
    capsys.readouterr()
    assert main(["resume", str(out)]) == 0
    assert main(["measure", str(out), "measures=[weight_abs_sum]"]) == 0
    df = load_results(out)
    assert (df.status == "ok").all() and df.weight_abs_sum.notna().all()
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert "progress 1/1" in capsys.readouterr().out
    assert main(["report", str(out), "--train-acc", "0", "--bootstrap", "2"]) == 0
    page = (out / "report" / "report.html").read_text()
    m = re.search(r"Launched by: <code>(.*?)</code>", page)
    assert m, "the relaunch command is marked approximate or missing"
    again = compose(shlex.split(html.unescape(m.group(1)))[2:] + [f"out={out}"])
    assert again.dataset.root == root and again.measure_modules == (module,)
    assert again.identity_hash() == json.loads((out / "sweep.json").read_text())["identity_hash"]
