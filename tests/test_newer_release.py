"""A result file written by a newer release (its schema version above this release's) is a
valid result there: this release never sets it aside or runs its trial again. `sweep resume`
refuses in one line (exit 2) before anything is moved or run, and `sweep status` names the
upgrade as the next step, where a damaged file is set aside and run again as before."""

import pyarrow.parquet as pq
import pytest

from sweep.cli import main
from workers.results.plan_file import pending_rows
from workers.results.record import SCHEMA_VERSION, NewerResult, newer_release

TINY = ["experiment=demo", "trials=3", "dry_run=true", "progress=false", "figure=false",
        "cluster.num_cpus=1"]


def _as_newer(path, version):
    """Rewrite the result file at ``path`` as a release of schema ``version`` would."""
    t = pq.read_table(path)
    meta = dict(t.schema.metadata or {})
    meta[b"sensitivity_sweep_schema_version"] = str(version).encode()
    pq.write_table(t.replace_schema_metadata(meta), path)


@pytest.fixture
def sweep(tmp_path, ray_local):
    out = tmp_path / "s"
    assert main(["launch", *TINY, f"out={out}"]) == 0
    return out


def test_a_newer_releases_result_is_not_set_aside_or_run_again(sweep, capsys):
    files = sorted((sweep / "trials").glob("*.parquet"))
    assert len(files) == 3
    newer, damaged = files[0], files[1]
    _as_newer(newer, SCHEMA_VERSION + 1)
    damaged.write_bytes(damaged.read_bytes()[:100])
    tid = newer.name.split(".")[0]
    assert newer_release(sweep, tid) == SCHEMA_VERSION + 1
    assert newer_release(sweep, damaged.name.split(".")[0]) is None  # (damaged, not newer)
    capsys.readouterr()

    assert main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert ("next: upgrade sensitivity-sweep: 1 result file(s) were written by a newer release"
            in out), out
    assert "next: sweep resume" not in out, out

    before = {p: p.read_bytes() for p in files}
    assert main(["resume", str(sweep)]) == 2
    said = capsys.readouterr().err.strip().splitlines()  # the plan's lines, then the refusal
    err = said[-1]
    assert [ln for ln in said if ln.startswith("sweep: error:")] == [err], said
    assert "Traceback" not in "\n".join(said), said
    assert err.startswith("sweep: error: out: 1 result file(s) of this sweep were written by a "
                          "newer release"), err
    assert f"schema version {SCHEMA_VERSION + 1}; this release reads up to {SCHEMA_VERSION}" in err
    assert "upgrade sensitivity-sweep" in err and "nothing was set aside or run" in err
    assert {p: p.read_bytes() for p in files} == before  # nothing moved, nothing rewritten
    assert not (sweep / "trials" / "invalid").exists()
    with pytest.raises(NewerResult):
        pending_rows(sweep, [f.name.split(".")[0] for f in files])
    # counting only (the plan's "left" after a stop, `sweep slurm`): not this release's to run
    assert len(pending_rows(sweep, [f.name.split(".")[0] for f in files],
                            move_invalid=False)) == 1  # the damaged one

    # the newer release's file gone back to this release's schema (as an upgrade reads it):
    # the damaged one is set aside and run again, the other two stand
    _as_newer(newer, SCHEMA_VERSION)
    assert main(["resume", str(sweep)]) == 0
    err = capsys.readouterr().err
    assert "3 trials planned, 2 already have results, 1 to run" in err, err
    assert len(list((sweep / "trials" / "invalid").iterdir())) == 1
