"""The command line explains itself: help, `sweep show`, hints for misspelled keys and values,
results on stdout and diagnostics on stderr, sweep directories named after what they hold."""

import sys

import pytest
import yaml

from procs import run
from sweep.cli import main
from sweep.config import compose, schema_keys

COMMANDS = ("launch", "plan", "show", "resume", "measure", "status", "report", "compact")


def test_top_level_help_lists_every_subcommand_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()
              if line.startswith("    ") and line.split() and line.split()[0] in COMMANDS]
    assert listed == list(COMMANDS)
    assert "``" not in out and "sweep COMMAND --help" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_help_names_its_arguments(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sweep {command}")
    if command in ("launch", "plan", "show"):
        assert "KEY=VALUE" in out and "sweep show --keys" in out
    if command not in ("launch", "plan", "show"):
        assert "SWEEP_DIR" in out


def test_show_prints_the_composed_configuration_as_yaml(capsys):
    assert main(["show", "dataset=fashion_mnist", "trials=8", "space.width=[16,32]"]) == 0
    out = capsys.readouterr().out
    doc = yaml.safe_load(out)
    cfg = compose(["dataset=fashion_mnist", "trials=8", "space.width=[16,32]"])
    assert doc["trials"] == 8 and doc["dataset"]["name"] == "fashion_mnist"
    assert doc["space"]["width"] == [16, 32]
    assert doc["train"]["steps"] == cfg.train.steps and doc["measures"] == ["all"]
    assert f"sweep directory: {cfg.out_dir()}" in out
    assert "launch it with: sweep launch dataset=fashion_mnist trials=8 'space.width=[16,32]'" in out


def test_hydras_cfg_job_is_show(capsys):
    assert main(["launch", "--cfg", "job", "trials=3"]) == 0
    shown = capsys.readouterr().out
    assert main(["show", "trials=3"]) == 0
    assert capsys.readouterr().out == shown
    assert main(["plan", "--cfg", "hydra"]) == 2
    assert "--cfg: allowed: job or all" in capsys.readouterr().err


def test_show_keys_lists_every_key_with_value_meaning_and_allowed_values(capsys):
    assert main(["show", "--keys", "experiment=paper_small", "dataset=digits"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.strip() and not line.startswith("#")}
    leaves = [k for k in schema_keys()
              if not any(other.startswith(k + ".") for other in schema_keys())]
    assert set(leaves) <= set(rows), set(leaves) - set(rows)
    assert "experiment" in rows and "paper_small" in rows["experiment"]
    for key, values in {"space.activation": ["relu", "tanh", "hardsigmoid"],
                        "space.optimizer": ["lbfgs", "rmsprop"],
                        "plan.infeasible": ["refuse", "replace", "keep"],
                        "experiment": ["neyshabur_labels", "paper_large"],
                        "dataset": ["fashion_mnist", "cifar10"],
                        "measures": ["all", "pacbayes_flatness", "jacobian_norm_test"]}.items():
        allowed = rows[key].split("allowed:")[1]
        assert all(v in allowed for v in values), (key, rows[key])
    # every key documented (its meaning from conf/config.yaml or the data set's file)
    undocumented = [k for k in leaves if len(rows[k].split(None, 2)) < 3]
    assert not undocumented, undocumented


@pytest.mark.parametrize("override,expect", [
    ("datset=digits", "datset: unknown key; closest valid keys: dataset"),
    ("trian.steps=5", "closest valid keys: train.steps"),
    ("space.widht=[8]", "closest valid keys: space.width"),
    ("space.width=64,128", "space.width: ambiguous value '64,128'; a list is written in "
                           "brackets, and quoted for the shell: 'space.width=[64,128]'"),
    ("space.width=[64,128", "space.width: cannot parse '[64,128'"),
])
def test_misspelled_keys_and_values_say_what_was_meant(capsys, override, expect):
    assert main(["launch", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
    assert main(["show", override]) == 2  # the same check before showing anything
    assert expect in capsys.readouterr().err


def test_a_sweep_directory_is_named_after_its_experiment_and_data_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(["dataset=fashion_mnist", "experiment=paper_small"])
    h = cfg.identity_hash()
    assert cfg.out_dir() == f"runs/paper_small-fashion_mnist-{h}"
    legacy = tmp_path / "runs" / f"paper_small-{h}"  # a sweep launched by an earlier version
    legacy.mkdir(parents=True)
    (legacy / "sweep.json").write_text("{}")
    assert cfg.out_dir() == f"runs/paper_small-{h}"  # kept, never run again elsewhere


def test_plan_prints_the_directory_on_stdout_and_the_rest_on_stderr(tmp_path):
    out = tmp_path / "p"
    r = run([sys.executable, "-m", "sweep.cli", "plan", "trials=4", f"out={out}"],
            capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"sweep directory: {out}  (analysis.load_results({str(out)!r}))"]
    assert "plan: 4 trials" in r.stderr and "sweep directory" not in r.stderr


@pytest.mark.parametrize("overrides", [
    [],
    ["dataset=fashion_mnist", "trials=8", "plan.grid=[]", "metrics.transitions_points=null",
     "space.train_size=[300,null]", "space.random_labels=[false,true]"],
    ["experiment=neyshabur_labels", "dataset=digits", "space.train_size=[128,256]", "trials=16"],
    ["experiment=paper_large", "train.checkpoint_every=5min", "train.time_budget=1h",
     "measures=[jacobian_norm_test]", "space.width=[8,16]", "out=/tmp/x", "progress=false"],
    ["train.lbfgs.lr=0.5", "metrics.boundary_extent=2", "dataset.seed=3", "save_weights=true"],
    ["plan.infeasible=replace", "resources.worker_memory_gb=4", "trials=20", "seed=3"],
])
def test_the_report_header_command_launches_the_same_sweep(overrides, tmp_path):
    """The command shown in a report composes a sweep of the same identity as the one stored,
    and the header names the experiment, data set and trials."""
    import json
    import shlex
    from dataclasses import asdict

    from analysis.report import config_html
    from sweep.show import launch_command
    from workers.results.storage import Store

    cfg = compose(overrides)
    stored = json.loads(json.dumps(asdict(cfg)))  # as sweep.json holds it
    command, exact = launch_command(stored)
    assert exact and command.startswith(f"sweep launch experiment={cfg.name} ")
    again = compose(shlex.split(command)[2:])
    assert again.identity_hash() == cfg.identity_hash()
    (tmp_path / "sweep.json").write_text(json.dumps({"config": stored}))
    head = config_html(Store(tmp_path), launch_command)
    assert f"experiment <code>{cfg.name}</code>" in head
    assert f"data set <code>{cfg.dataset.name}</code>, {cfg.trials} trials planned" in head
    import html

    assert f"Launched by: <code>{command}</code>" in html.unescape(head)


def _commands():
    """Every command line of the documentation: lines of fenced code blocks in the READMEs
    that run sweep or a bench script, and the commands quoted in the experiments' comments."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docker/README.md", "bench/README.md"):
        inside = False
        for line in (root / doc).read_text().splitlines():
            if line.startswith("```"):
                inside = not inside
                continue
            cmd = line.split("  #")[0].strip()
            if inside and cmd.startswith(("sweep ", "python bench/", ".venv/bin/sweep ")):
                yield doc, cmd
    for f in sorted((root / "conf").rglob("*.yaml")):
        for line in f.read_text().splitlines():
            if line.startswith("#") and "=[" in line:
                yield f.name, line.lstrip("# ").strip()


def test_every_documented_command_quotes_what_zsh_would_glob():
    """zsh expands unquoted [ ] * ? as file patterns ("no matches found"); bash passes them
    through only by luck. Every documented command quotes such arguments."""
    import shlex

    seen = 0
    for where, cmd in _commands():
        seen += 1
        for token in shlex.split(cmd, posix=False):
            if any(c in token for c in "[]*?") and token[0] not in "'\"":
                raise AssertionError(f"{where}: unquoted {token!r} in: {cmd}")
    assert seen > 20


def test_a_report_older_than_a_result_is_not_current(tmp_path):
    """A relaunch with nothing to run keeps the report only while it is newer than every
    result and measure file (one that failed or was turned off while trials ran is rebuilt)."""
    import os

    from sweep.cli import report_current
    from workers.results.storage import Store

    d = Store(tmp_path)
    for rel in ("trials/a.parquet", "measures/a.m.v1.x.parquet", "report/report.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.utime(tmp_path / "trials/a.parquet", ns=(10**18, 10**18))
    os.utime(tmp_path / "measures/a.m.v1.x.parquet", ns=(10**18, 10**18))
    os.utime(tmp_path / "report/report.html", ns=(2 * 10**18, 2 * 10**18))
    assert report_current(d, "report/report.html")
    os.utime(tmp_path / "measures/a.m.v1.x.parquet", ns=(3 * 10**18, 3 * 10**18))
    assert not report_current(d, "report/report.html")
    os.utime(tmp_path / "measures/a.m.v1.x.parquet", ns=(10**18, 10**18))
    os.utime(tmp_path / "trials/a.parquet", ns=(3 * 10**18, 3 * 10**18))
    assert not report_current(d, "report/report.html")
    assert not report_current(d, "report/missing.html")


@pytest.mark.parametrize("command", ["resume", "measure"])
def test_resume_and_measure_help_list_every_key_they_accept(capsys, command):
    """The keys `sweep resume --help` and `sweep measure --help` name are exactly those
    ``stored_config`` accepts (sweep.driver.RESUMABLE_KEYS, a group's as "group.*"): before,
    the help named 9 of 15."""
    from sweep.driver import RESUMABLE_KEYS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for key in RESUMABLE_KEYS:
        named = [k for k in schema_keys() if k.startswith(key + ".")]
        assert (f"{key}.*" if named else key) in out, key


@pytest.mark.parametrize("args", [
    ["report", "{d}", "--rank-by", "foo"],
    ["report", "{d}", "--bootstrap", "-1"],
    ["report", "{d}", "--train-acc", "2"],
    ["resume", "{d}", "train.steps=10"],
    ["resume", "{d}", "measures=[no_such_measure]"],
    ["measure", "{d}", "measures=[no_such_measure]"],
    ["measure", "{d}", "--retrain", "not_a_trial"],
])
def test_bad_input_to_an_existing_sweep_writes_nothing_there(tmp_path, capsys, args):
    """Bad arguments or overrides for `sweep report`, `resume` and `measure` end in one line,
    exit 2, before anything is written in the sweep directory: not even the probe that checks
    it can be written (whose creation and removal changed the directory's modification time)."""
    import os

    d = tmp_path / "p"
    assert main(["plan", "trials=2", f"out={d}"]) == 0
    capsys.readouterr()
    stamp = {p: os.stat(p).st_mtime_ns for p in [d, *d.rglob("*")]}
    assert main([a.format(d=d) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sweep: error: "), err
    assert {p: os.stat(p).st_mtime_ns for p in [d, *d.rglob("*")]} == stamp


def test_a_plan_too_large_for_this_machine_is_written_with_a_note(tmp_path, capsys):
    """`sweep plan` runs nothing (a plan may be for a cluster): trials larger than a local Ray
    here would be are written, with a note saying that a local resume would refuse them; the
    refusal of a key resume cannot change names the keys it can (groups as "group.*")."""
    out = tmp_path / "p"
    assert main(["plan", "trials=2", f"out={out}", "resources.cpus_per_trial=999"]) == 0
    err = capsys.readouterr().err
    assert "note: a local resume here would refuse it: resources.cpus_per_trial: 999" in err
    assert (out / "plan.parquet").exists()
    assert main(["resume", str(out), "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "cluster.*, resources.*" in err and "metrics.*" in err, err


def test_the_command_line_shows_the_projects_warnings_as_note_lines():
    """A UserWarning of the project's (a measure column that mixes settings, read by `sweep
    report`) is one "note:" line, not Python's file:line and source line; others as Python
    shows them."""
    import analysis.load
    from sweep.cli import _user_warning

    assert _user_warning("mixes them", UserWarning, analysis.load.__file__, 3) == \
        "note: mixes them\n"
    other = _user_warning("x", UserWarning, "/usr/lib/python3/dist-packages/x.py", 7)
    assert other.startswith("/usr/lib/python3/dist-packages/x.py:7: UserWarning: x")
    assert "DeprecationWarning" in _user_warning("y", DeprecationWarning,
                                                 analysis.load.__file__, 3)


def test_show_keys_says_an_older_metrics_name_at_its_default_sets_nothing(capsys):
    """The demo's `sweep show --keys` listed metrics.transitions_points 100 beside
    measure_settings.transitions_test.points 25 without saying which is used (new user)."""
    assert main(["show", "--keys"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("metrics.transitions_points "))
    assert ("older name of measure_settings.transitions_test.points; at this default it sets "
            "nothing (that key's value is used)") in line
    assert main(["show", "--keys", "metrics.transitions_points=7"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("metrics.transitions_points "))
    assert "older name of" in line and "sets nothing" not in line
