"""The identity of every shipped experiment, frozen: the identity hash of each configuration and
the ids of its planned trials (all 90 of the demo) as the code of 719ca33 computed them
(``tests/fixtures/golden_identity.json``). A refactor, a new hyperparameter or a new
configuration key that changed any of them would orphan every sweep users have written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sweep.config import compose
from sweep.plan import plan_trials

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden_identity.json").read_text())
CASES = sorted(GOLDEN["experiments"].items())


@pytest.mark.parametrize("name,golden", CASES, ids=[n for n, _ in CASES])
def test_identity_and_trial_ids_unchanged(name, golden):
    cfg = compose(golden["overrides"])
    assert cfg.identity_hash() == golden["identity_hash"]
    if "n_trials" not in golden:
        return
    ids = [s.trial_id for s in plan_trials(cfg)]
    assert len(ids) == golden["n_trials"]
    if "trial_ids" in golden:
        assert ids == golden["trial_ids"]
    else:
        assert ids[:5] == golden["first_ids"]
        assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == golden["ids_sha256"]


def test_the_demo_is_pinned_id_by_id():
    demo = GOLDEN["experiments"]["demo"]
    assert demo["overrides"] == [] and demo["n_trials"] == 90 and len(set(demo["trial_ids"])) == 90


GOLDEN_V1 = json.loads((Path(__file__).parent / "fixtures" / "golden_identity_v1.json").read_text())


@pytest.mark.parametrize("case", GOLDEN_V1["cases"],
                         ids=[" ".join(c["overrides"]) for c in GOLDEN_V1["cases"]])
def test_version_1_identity_unchanged(case):
    """A sweep created before identity version 2 is recognised by its version-1 hash, which
    kept the measurement settings: moving an experiment's settings from the ``metrics.*``
    aliases to ``measure_settings`` must not change it (``sweep launch experiment=X
    out=<that directory>`` would be refused as another sweep)."""
    assert compose(case["overrides"]).identity_hash(1) == case["identity_hash_v1"]
