"""Bad input found by a helper's audit that crashed with a traceback (or left a file behind)
instead of one line and exit 2: integers beyond 64 bits, a seed beyond numpy's samplers' 32
bits, absurd widths and depths, a data root under a user that does not exist, a
cluster.address that `sweep plan` took and `sweep launch` refused; and a refused
`sweep measure` that still rewrote measures.json."""

import json

import pytest

from sweep.cli import main

TINY = ["trials=1", "space.width=[8]", "space.depth=[2]", "train.steps=10",
        "dataset.train_size=200", "dataset.test_size=40", "progress=false", "figure=false",
        "measures=[jacobian_norm_test]"]


def _refused(capsys, args, *words):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sweep: error: "), err
    assert all(w in err for w in words), err
    return err


@pytest.mark.parametrize("override, words", [
    ("train.steps=99999999999999999999", ("train.steps", "does not fit in 64 bits",
                                          "9223372036854775807")),
    ("space.seed=[9223372036854775808]", ("space.seed", "does not fit in 64 bits")),
    ("seed=4294967296", ("seed", "4294967295")),
    ("space.width=[9223372036854775807]", ("space.width", "16777216")),
    ("space.depth=[100000]", ("space.depth", "10000")),
    ('dataset.root="~nosuchuser-for-sure/x"', ("files not found under ~nosuchuser-for-sure/x",)),
    (f"space.lr=[{10**400}]", ("space.lr: must be finite, got an integer of 401 digits",)),
    (f"cluster.node_wait={10**400}", ("cluster.node_wait", "allowed: seconds")),
    (f"resources.trial_timeout={10**400}", ("resources.trial_timeout", "allowed: seconds")),
    ("cluster.address=garbage", ("cluster.address: 'garbage' is not an address", "HOST:PORT")),
    ("cluster.address=127.0.0.1:notaport", ("is not an address",)),
])
@pytest.mark.parametrize("command", ["plan", "launch"])
def test_values_that_crashed_are_one_line_and_write_nothing(tmp_path, capsys, command, override,
                                                            words):
    out = tmp_path / "s"
    extra = ["dataset=mnist"] if override.startswith("dataset.root") else []
    _refused(capsys, [command, *TINY, *extra, override, f"out={out}"], *words)
    assert not out.exists()


def test_the_largest_allowed_seed_plans(tmp_path, capsys):
    assert main(["plan", *TINY, "seed=4294967295", f"out={tmp_path / 's'}"]) == 0


def test_a_refused_measure_leaves_measures_json_as_it_was(tmp_path, capsys, ray_local):
    out = tmp_path / "s"
    assert main(["launch", *TINY, "save_weights=false", f"out={out}"]) == 0
    capsys.readouterr()
    before = (out / "measures.json").read_bytes()
    _refused(capsys, ["measure", str(out), "measures=[transitions_test]",
                      "measure_settings.transitions_test.points=7"],
             "none has saved weights")
    assert (out / "measures.json").read_bytes() == before
    assert "transitions_test" not in json.loads(before)


def test_a_group_given_to_resume_or_measure_is_a_key_they_cannot_change(tmp_path, capsys):
    """`experiment=` read as an unknown key whose closest valid key was "experiment"."""
    out = tmp_path / "s"
    assert main(["plan", *TINY, f"out={out}"]) == 0
    capsys.readouterr()
    for command in ("resume", "measure"):
        _refused(capsys, [command, str(out), "experiment=paper_large"],
                 f"{command}: cannot override 'experiment'")
    _refused(capsys, ["plan", "=5"], "'=5': no key before '='", "KEY=VALUE")
    assert main(["measure", str(out)]) == 0  # a planned sweep: none finished, none measured
    assert "nothing to evaluate (no trial has finished yet" in capsys.readouterr().err


def test_show_given_a_sweep_directory_says_what_it_takes(tmp_path, capsys):
    """`sweep show runs/x` read the directory as an unknown key."""
    _refused(capsys, ["show", str(tmp_path)], f"{tmp_path}: not KEY=VALUE",
             "sweep status DIR")
