import math

import mpmath
import pytest
import torch
import torch.nn.functional as F

from workers.data import load_data
from workers.models import build_mlp
from workers.results.record import read_trial
from workers.results.layout import trial_path
from workers.results.spec import DataSpec, RunContext, TrainSpec, TrialSpec
from workers.train import decayed_lr, train_model
from workers.trial import run_trial


def spec(**kw):
    base = dict(data=DataSpec("digits", train_size=300, test_size=100), width=32, depth=3,
                activation="relu", optimizer="momentum", lr=0.01, batch_size=64, init_scale=1.0,
                seed=1, train=TrainSpec(steps=300, check_every=50))
    base.update(kw)
    return TrialSpec(**base)


def test_lr_decays_tenfold_every_500_epochs():
    t = TrainSpec()
    assert decayed_lr(0.01, 0.0, t) == 0.01
    assert decayed_lr(0.01, 499.99, t) == 0.01
    assert decayed_lr(0.01, 500.0, t) == pytest.approx(0.001)
    assert decayed_lr(0.01, 1234.0, t) == pytest.approx(0.0001)


def test_lr_decays_on_epochs_as_the_loop_draws_them():
    """An epoch is floor(n / B) steps (the loop drops the remainder), so digits (1347 train
    points) with batch 128 has 10 steps per epoch and decays after 5000 steps at the paper's
    500 epochs, not 5262 (= 500 * 1347 / 128). Here 5-epoch decays: steps 50, 100, ..."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    data = load_data("digits")
    assert len(data.y_train) == 1347
    lrs = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        train_model(build_mlp(64, 4, 2, 10, "relu", seed=0), data, "sgd", 0.1, 128,
                    TrainSpec(steps=160, early_stop=False, lr_decay_epochs=5), seed=0)
    finally:
        handle.remove()
    want = [0.1 * 0.1 ** ((t // (1347 // 128)) // 5) for t in range(160)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert lrs[49] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.01)


def test_minibatch_sgd_step_matches_a_hand_written_step():
    # one SGD step on a given batch equals w - lr * grad computed independently
    data = load_data("digits", train_size=64, test_size=10)
    m1 = build_mlp(64, 16, 2, 10, "tanh", seed=3)
    m2 = build_mlp(64, 16, 2, 10, "tanh", seed=3)
    out = train_model(m1, data, "sgd", 0.5, 64, TrainSpec(steps=1, early_stop=False), seed=0)
    assert out.steps == 1 and not out.diverged
    x, y = data.x_train.flatten(1), data.y_train  # batch = the whole (64-point) train set
    loss = F.cross_entropy(m2(x), y)
    grads = torch.autograd.grad(loss, list(m2.parameters()))
    for p1, p2, g in zip(m1.parameters(), m2.parameters(), grads):
        torch.testing.assert_close(p1, p2 - 0.5 * g)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop", "lbfgs"])
def test_same_spec_same_numbers(tmp_path, optimizer):
    s = spec(optimizer=optimizer, lr=1.0 if optimizer == "lbfgs" else 0.01,
             batch_size=None if optimizer == "lbfgs" else 64)
    a = run_trial(s, RunContext(str(tmp_path / "a")))
    b = run_trial(s, RunContext(str(tmp_path / "b")))
    assert a["status"] == "ok", a["error"]
    keys = ["steps", "train_acc", "test_acc", "train_loss", "test_loss", "jacobian_norm_train",
            "jacobian_norm_test"]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    pa = read_trial(trial_path(tmp_path / "a", s.trial_id)).column("points").to_pylist()
    pb = read_trial(trial_path(tmp_path / "b", s.trial_id)).column("points").to_pylist()
    assert pa == pb


def test_early_stop_at_full_train_accuracy_and_steps_recorded(tmp_path):
    s = spec(optimizer="adam", lr=0.01, train=TrainSpec(steps=5000, check_every=25))
    row = run_trial(s, RunContext(str(tmp_path)))
    assert row["status"] == "ok" and row["train_acc"] == 1.0
    assert row["steps"] < 5000 and row["steps"] % 25 == 0
    row2 = run_trial(spec(optimizer="adam", lr=0.01, train=TrainSpec(steps=5000, check_every=25,
                                                                     early_stop=False)),
                     RunContext(str(tmp_path)))
    assert row2["steps"] == 5000


def test_summary_is_consistent_with_the_points(tmp_path):
    s = spec()
    row = run_trial(s, RunContext(str(tmp_path)))
    pts = read_trial(trial_path(tmp_path, s.trial_id)).column("points").to_pylist()[0]
    test = [p for p in pts if p["split"] == "test"]
    assert len(test) == 100 and row["test_size"] == 100 and row["train_size"] == 300
    assert row["test_acc"] == pytest.approx(sum(p["correct"] for p in test) / 100)
    assert row["jacobian_norm_test"] == pytest.approx(sum(p["jacobian_norm"] for p in test) / 100)
    assert row["test_loss"] == pytest.approx(sum(p["loss"] for p in test) / 100)
    assert row["gen_gap"] == pytest.approx(row["train_acc"] - row["test_acc"])
    assert row["n_params"] == 64 * 32 + 32 * 32 + 32 * 10


def test_jacobian_points_subset(tmp_path):
    s = spec(metrics=__import__("workers.results.spec", fromlist=["MetricSpec"]).MetricSpec(jacobian_points=17))
    row = run_trial(s, RunContext(str(tmp_path)))
    assert row["jacobian_points_train"] == 17 and row["jacobian_points_test"] == 17


def test_diverging_trial_is_recorded_as_diverged(tmp_path):
    s = spec(optimizer="sgd", lr=1e30, init_scale=8.0)
    row = run_trial(s, RunContext(str(tmp_path)))
    assert row["status"] == "diverged" and "non-finite" in row["error"]
    assert row["steps"] == 50  # caught at the first check
    assert math.isnan(row["test_acc"])
    stored = read_trial(trial_path(tmp_path, s.trial_id)).to_pylist()[0]
    assert stored["status"] == "diverged"


def test_failing_trial_is_recorded_with_its_reason(tmp_path):
    s = spec(data=DataSpec("mnist"))
    row = run_trial(s, RunContext(str(tmp_path), data_root=str(tmp_path / "none")))
    assert row["status"] == "failed" and "DataMissing" in row["error"]  # a DataError
    assert read_trial(trial_path(tmp_path, s.trial_id)).to_pylist()[0]["status"] == "failed"


def test_lbfgs_respects_the_iteration_cap(tmp_path):
    s = spec(optimizer="lbfgs", lr=1.0, batch_size=None,
             train=TrainSpec(steps=10_000, check_every=7, early_stop=False, lbfgs_max_iter=20,
                             lbfgs_tolerance_grad=0.0, lbfgs_tolerance_change=0.0))
    row = run_trial(s, RunContext(str(tmp_path)))
    assert row["status"] == "ok" and row["steps"] == 20
    assert row["batch_size"] is None  # full batch: the hyperparameter is null, as in the plan


def test_transitions_per_point_are_the_exact_counts_of_the_translation_loops(tmp_path):
    from workers.models import load_model
    from workers.results.spec import MetricSpec
    from workers.trajectories import translation_path
    from workers.transitions import count_transitions

    s = spec(activation="hardtanh", metrics=MetricSpec(jacobian_points=40, transitions_points=9))
    row = run_trial(s, RunContext(str(tmp_path), save_weights=True))
    assert row["status"] == "ok" and row["transitions_method"] == "exact"
    assert row["transitions_points"] == 9 and row["transitions_k"] is None
    pts = read_trial(trial_path(tmp_path, s.trial_id)).column("points").to_pylist()[0]
    test = [p for p in pts if p["split"] == "test"]
    counted = [p for p in test if p["transitions"] is not None]
    assert len(counted) == 9 and len([p for p in test if p["jacobian_norm"] is not None]) == 40
    assert len(test) == 40  # the 9 are among the 40: one permutation serves both subsets
    model = load_model(tmp_path, s.trial_id)
    data = load_data("digits", train_size=300, test_size=100)
    for p in counted:
        assert p["transitions"] == count_transitions(model, translation_path(data.x_test[p["index"]]))
    assert row["transitions_test"] == pytest.approx(sum(p["transitions"] for p in counted) / 9)
    assert row["transitions_test"] > 0


def test_tanh_transitions_are_sampled_and_zero_points_turn_them_off(tmp_path):
    from workers.results.spec import MetricSpec

    row = run_trial(spec(activation="tanh", metrics=MetricSpec(transitions_points=5,
                                                               transitions_k=256)),
                    RunContext(str(tmp_path)))
    assert row["transitions_method"] == "sampled" and row["transitions_k"] == 256
    assert row["transitions_test"] > 0
    row = run_trial(spec(metrics=MetricSpec(transitions_points=0)), RunContext(str(tmp_path)))
    assert row["transitions_method"] is None and math.isnan(row["transitions_test"])


def test_out_of_memory_is_recorded_as_oom(tmp_path):
    # a 2^22-wide hidden layer asks the CPU allocator for 2^46 bytes: it refuses at once
    s = spec(width=1 << 22)
    row = run_trial(s, RunContext(str(tmp_path)))
    assert row["status"] == "oom" and "allocate" in row["error"]
    assert read_trial(trial_path(tmp_path, s.trial_id)).to_pylist()[0]["status"] == "oom"


def test_fitted_lbfgs_trial_keeps_every_per_point_loss(tmp_path):
    """Issue example: on fitted L-BFGS digits trials most test points had a float32 loss of
    exactly 0.0 (margin > 16.6) and Fig. 6 dropped them. Stored per-point values are float64
    from the stable form: every point keeps a positive loss and Jacobian norm, and they equal
    an independent float64 recomputation from the saved weights."""
    from workers import load_model

    s = spec(optimizer="lbfgs", lr=1.0, batch_size=None, width=64,
             train=TrainSpec(steps=400, check_every=50, early_stop=False))
    row = run_trial(s, RunContext(str(tmp_path), save_weights=True))
    assert row["status"] == "ok" and row["train_acc"] == 1.0
    pts = read_trial(trial_path(tmp_path, s.trial_id)).column("points").to_pylist()[0]
    train = [p for p in pts if p["split"] == "train"]
    loss = torch.tensor([p["loss"] for p in train], dtype=torch.float64)
    assert (loss > 0).all() and (loss < 6e-8).sum() > 0  # float32 would have stored 0.0 there
    model = load_model(str(tmp_path), s.trial_id)
    data = load_data("digits", train_size=300, test_size=100, seed=s.data.seed)
    idx = torch.tensor([p["index"] for p in train])
    z = model(data.x_train.flatten(1)[idx]).detach().double()  # the trial's float32 logits
    y = data.y_train[idx]
    want = torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)
    big = want > 1e-6  # where float64 logsumexp - z_y is itself accurate
    torch.testing.assert_close(loss[big], want[big], rtol=1e-8, atol=0)
    mpmath.mp.dps = 50
    for i in torch.argsort(loss)[:5].tolist():  # the most confident points, against mpmath
        zi = [mpmath.mpf(float(v)) for v in z[i]]
        ref = mpmath.log(mpmath.fsum(mpmath.e ** (v - zi[int(y[i])]) for v in zi))
        assert abs(float(loss[i]) - float(ref)) <= 1e-12 * float(ref)
    jac = torch.tensor([p["jacobian_norm"] for p in train])
    assert (jac > 0).all()


def test_missing_data_on_the_worker_is_a_retryable_failure(tmp_path):
    """The issue's example: the trial ran where its data files are not. Recorded retryable, so
    `sweep resume` runs it again once the files are there."""
    from sweep.driver import pending

    s = spec(data=DataSpec("mnist", train_size=100, test_size=50))
    row = run_trial(s, RunContext(str(tmp_path), data_root=str(tmp_path / "nothing")))
    assert row["status"] == "failed" and row["retryable"] is True
    assert "files not found" in row["error"]
    assert [t.trial_id for t in pending(str(tmp_path), [s])] == [s.trial_id]


@pytest.mark.parametrize("exc,retryable", [
    ("ModuleNotFoundError(\"No module named 'torchvision'\")", True),
    ("RuntimeError('Found no NVIDIA driver on your system')", True),
    ("AssertionError('Torch not compiled with CUDA enabled')", True),
    ("OSError(errno.ENOSPC, 'No space left on device')", True),
    ("ValueError('a bad configuration')", False),
    ("RuntimeError('mat1 and mat2 shapes cannot be multiplied')", False),
    ("FloatingPointError('nan in the weights')", False),
    ("DataError('subset size 500 outside 1..300')", False),
])
def test_environment_failures_are_retryable_and_the_trials_own_are_final(tmp_path, monkeypatch,
                                                                        exc, retryable):
    import errno  # noqa: F401 (used by the expressions)

    import workers.trial as trial_mod
    from sweep.driver import pending
    from workers.data import DataError  # noqa: F401

    error = eval(exc)

    def execute(spec, ctx):
        raise error

    monkeypatch.setattr(trial_mod, "execute", execute)
    s = spec()
    row = run_trial(s, RunContext(str(tmp_path)))
    assert row["status"] == "failed" and row["retryable"] is retryable
    assert len(pending(str(tmp_path), [s])) == (1 if retryable else 0)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 1e38), ("momentum", 1e38), ("adam", 1e37),
                                           ("rmsprop", 1e37)])
def test_a_last_update_that_makes_the_network_nonfinite_is_diverged(tmp_path, optimizer, lr):
    """#22.3: one step at lr 1e38: the loss before the update is finite (the loop's check sees
    it), the update makes weights or outputs non-finite: ``diverged``, never ``ok``."""
    s = spec(optimizer=optimizer, lr=lr, train=TrainSpec(steps=1, check_every=1))
    row = run_trial(s, RunContext(str(tmp_path)))
    # independently: the trained network's outputs, rebuilt the slow way, are not all finite
    data = load_data("digits", train_size=300, test_size=100)
    m = build_mlp(64, 32, 3, 10, "relu", s.init_scale, s.seed)
    train_model(m, data, optimizer, lr, 64, TrainSpec(steps=1, check_every=1), seed=s.seed)
    finite = all(bool(torch.isfinite(p).all()) for p in m.parameters()) and bool(
        torch.isfinite(m(data.x_train.flatten(1))).all() and torch.isfinite(
            m(data.x_test.flatten(1))).all())
    assert not finite
    assert row["status"] == "diverged", row["error"]
    assert "non-finite" in row["error"]
    assert math.isnan(row["train_loss"]) and math.isnan(row["test_acc"])


def test_nonfinite_weights_after_the_last_step_end_training_as_diverged():
    """The weights themselves: a step that overflows them to inf (not only the outputs)."""
    data = load_data("digits", train_size=64, test_size=10)
    m = build_mlp(64, 16, 2, 10, "relu", 8.0, seed=0)
    out = train_model(m, data, "sgd", 3e38, 64, TrainSpec(steps=1, check_every=1), seed=0)
    assert not all(bool(torch.isfinite(p).all()) for p in m.parameters())
    assert out.diverged and "non-finite weights after step 1" in out.reason


def test_lbfgs_with_finite_weights_and_outputs_is_not_diverged(tmp_path):
    row = run_trial(spec(optimizer="lbfgs", lr=1.0, batch_size=None,
                         train=TrainSpec(steps=5, check_every=5)), RunContext(str(tmp_path)))
    assert row["status"] == "ok" and math.isfinite(row["train_loss"])


def test_an_update_whose_step_overflows_float32_is_diverged(tmp_path):
    """Adam at lr 1e38: its step size lr / (1 - beta1) is beyond float32, torch raises."""
    row = run_trial(spec(optimizer="adam", lr=1e38, train=TrainSpec(steps=1, check_every=1)),
                    RunContext(str(tmp_path)))
    assert row["status"] == "diverged" and "overflow" in row["error"]


# --- the optimizers' settings against their formulas (issue 22, item 14) ----------------------
# A.5.4: momentum 0.9; the other coefficients at the framework's defaults, PyTorch's here
# (README "What a trial does"): Adam betas (0.9, 0.999), eps 1e-8; RMSProp alpha 0.99,
# eps 1e-8; no weight decay, dampening or Nesterov. The updates are written out by hand.

GRADS = [(1.0, -0.2), (-3.0, 0.1), (0.5, 4.0), (2.0, -1.0)]  # g_t of a 2-element parameter


def _by_hand(name: str, p0, lr: float) -> list[list[float]]:
    """The parameter after each step of ``name`` fed the gradients GRADS, from the update
    formulas in plain Python floats."""
    out, p = [], list(p0)
    buf, m, v = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(GRADS, start=1):
        for i in range(2):
            if name == "sgd":
                p[i] -= lr * g[i]
            elif name == "momentum":
                buf[i] = g[i] if t == 1 else 0.9 * buf[i] + g[i]
                p[i] -= lr * buf[i]
            elif name == "adam":
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                v[i] = 0.999 * v[i] + 0.001 * g[i] ** 2
                p[i] -= lr * (m[i] / (1 - 0.9 ** t)) / (math.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
            elif name == "rmsprop":
                v[i] = 0.99 * v[i] + 0.01 * g[i] ** 2
                p[i] -= lr * g[i] / (math.sqrt(v[i]) + 1e-8)
        out.append(list(p))
    return out


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_each_optimizer_steps_as_its_formula_with_the_papers_coefficients(name):
    """Issue 22 item 14: momentum 0.5 for 0.9, or other Adam betas, passed every test. The
    optimizer the training loop makes, fed a known gradient sequence, moves the parameter as
    the update formula with the stated coefficients says, step by step."""
    from workers.train import make_optimizer

    p = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    opt = make_optimizer(name, [p], 0.1, TrainSpec())
    want = _by_hand(name, [0.3, -0.7], 0.1)
    for t, g in enumerate(GRADS):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        assert p.detach().tolist() == pytest.approx(want[t], rel=1e-12, abs=1e-15), (name, t)


@pytest.mark.parametrize("name,lr", [("momentum", 0.5), ("adam", 0.05)])
def test_training_steps_equal_hand_written_updates(name, lr):
    """The same through ``train_model``: three full-batch steps on 64 digits equal a loop
    written here (autograd for the gradient, the update by hand as in ``_by_hand``)."""
    data = load_data("digits", train_size=64, test_size=10)
    m1 = build_mlp(64, 16, 2, 10, "tanh", seed=3)
    m2 = build_mlp(64, 16, 2, 10, "tanh", seed=3)
    out = train_model(m1, data, name, lr, 64, TrainSpec(steps=3, early_stop=False), seed=0)
    assert out.steps == 3 and not out.diverged
    x, y = data.x_train.flatten(1), data.y_train
    params = [p.detach().clone().double() for p in m2.parameters()]
    state = [dict(buf=torch.zeros_like(p), m=torch.zeros_like(p), v=torch.zeros_like(p))
             for p in params]
    for t in range(1, 4):
        with torch.no_grad():
            for q, p in zip(m2.parameters(), params):
                q.copy_(p)
        grads = torch.autograd.grad(F.cross_entropy(m2(x), y), list(m2.parameters()))
        for p, g, s in zip(params, grads, state):
            g = g.double()
            if name == "momentum":
                s["buf"] = g if t == 1 else 0.9 * s["buf"] + g
                p -= lr * s["buf"]
            else:
                s["m"] = 0.9 * s["m"] + 0.1 * g
                s["v"] = 0.999 * s["v"] + 0.001 * g * g
                p -= lr * (s["m"] / (1 - 0.9 ** t)) / ((s["v"] / (1 - 0.999 ** t)).sqrt() + 1e-8)
    for got, want in zip(m1.parameters(), params):
        torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-5)


def test_the_recorded_accuracies_and_gap_are_those_of_the_saved_network(tmp_path):
    """A rule checked only against the trial's own per-point rows before: train_acc,
    test_acc, train_loss and gen_gap = train_acc - test_acc over the trial's whole train and
    test sets. Here they are recomputed from the saved weights, with plain torch."""
    from workers.models import load_model

    s = spec(train=TrainSpec(steps=100, check_every=50))
    row = run_trial(s, RunContext(str(tmp_path), save_weights=True))
    model = load_model(tmp_path, s.trial_id)
    data = load_data("digits", train_size=300, test_size=100, seed=s.data.seed)
    with torch.no_grad():
        z_tr, z_te = model(data.x_train.flatten(1)), model(data.x_test.flatten(1))
    train_acc = (z_tr.argmax(1) == data.y_train).double().mean().item()
    test_acc = (z_te.argmax(1) == data.y_test).double().mean().item()
    assert row["train_acc"] == pytest.approx(train_acc, abs=1e-12)
    assert row["test_acc"] == pytest.approx(test_acc, abs=1e-12)
    assert row["gen_gap"] == pytest.approx(train_acc - test_acc, abs=1e-12)
    assert row["train_loss"] == pytest.approx(F.cross_entropy(z_tr.double(), data.y_train).item(),
                                              rel=1e-5)
