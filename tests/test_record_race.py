"""The driver's own records of a trial (a worker that died for good, a trial over its time limit)
race the trial's stale attempt: when that attempt's result lands between the driver's look and
its write, the driver's write is dropped (results are never overwritten), and the driver must
report the status that stands on disk, not the one it meant to write."""

import ray.exceptions as rex

import sweep.trials as trials
from workers.results.record import ResultError, read_trial_summary, write_trial
from workers.results.spec import DataSpec, TrialSpec
from workers.trial import failure_summary

SPEC = TrialSpec(DataSpec("digits", train_size=60, test_size=30), 8, 2, "relu", "sgd", 0.01, 32,
                 1.0, 1)


def _stale_ok_row() -> dict:
    row = failure_summary(SPEC, "ok", None)
    row.update(train_acc=0.75, test_acc=0.5, gen_gap=0.25)
    return row


def test_a_failure_record_that_loses_the_race_returns_the_standing_result(tmp_path, monkeypatch):
    real, looks = trials.read_result, []

    def look(out, trial_id, columns=None):
        looks.append(trial_id)
        if len(looks) == 1:  # the driver's look: nothing yet; then the stale attempt writes
            write_trial(out, _stale_ok_row())
            raise ResultError("no result yet")
        return real(out, trial_id, columns=columns)

    monkeypatch.setattr(trials, "read_result", look)
    status = trials._record_system_failure(tmp_path, SPEC, rex.WorkerCrashedError())
    stored = read_trial_summary(tmp_path, SPEC.trial_id)
    assert (status, stored["status"], stored["test_acc"]) == ("ok", "ok", 0.5)


def test_a_timeout_record_that_loses_the_race_returns_the_standing_result(tmp_path, monkeypatch):
    looks = []

    def look(out, trial_id):
        looks.append(trial_id)
        if len(looks) == 1:  # the driver's look: nothing yet; then the stale attempt writes
            write_trial(out, _stale_ok_row())
            return None
        return read_trial_summary(out, trial_id)["status"]

    monkeypatch.setattr(trials, "_result_status", look)
    status = trials._record_timeout(tmp_path, SPEC, "TrialTimeout: still running after 8 s")
    stored = read_trial_summary(tmp_path, SPEC.trial_id)
    assert (status, stored["status"], len(looks)) == ("ok", "ok", 2)


def test_without_a_race_the_failure_is_recorded(tmp_path):
    status = trials._record_system_failure(tmp_path, SPEC, rex.WorkerCrashedError())
    stored = read_trial_summary(tmp_path, SPEC.trial_id)
    assert status == stored["status"] == "failed" and stored["retryable"]
    assert stored["error"].startswith("WorkerCrashedError (1 attempt): ")
