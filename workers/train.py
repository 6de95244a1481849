"""Training with cross-entropy (A.5): SGD, Momentum, Adam, RMSProp and full-batch L-BFGS.

Secondary optimizer coefficients are PyTorch's defaults (Momentum: 0.9). The learning rate is
multiplied by ``lr_decay`` every ``lr_decay_epochs`` epochs, an epoch being one pass as the loop
draws it (floor(n / B) steps, the remainder dropped). Training stops at the step budget,
or - with ``early_stop`` - once the whole (un-augmented) train set is classified 100% correctly,
checked every ``check_every`` steps. A non-finite loss, or non-finite weights after the last
update, end training as diverged.

Weight decay (``TrainSpec.weight_decay``, lambda; Jiang et al. 2020 vary it) is coupled L2
regularisation: the objective is the cross-entropy plus (lambda / 2) ||w||^2 over every weight
(the networks have no biases), so lambda w joins the gradient. The mini-batch optimizers get it
as PyTorch's ``weight_decay`` argument, which adds lambda w to the gradient before the update
(for Adam too: ``torch.optim.Adam``, not AdamW's decoupled decay); L-BFGS, whose line search
needs the objective itself, adds the penalty to its closure's loss. lambda = 0 is the plain
cross-entropy, bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.data import Data, augment_batch
from workers.metrics import accuracy
from workers.names import MINIBATCH_OPTIMIZERS, OPTIMIZERS  # noqa: F401 (torch-free there)
from workers.results.spec import TrainSpec


@dataclass
class TrainOutcome:
    steps: int  # optimizer steps (L-BFGS: iterations) actually run; the fallback step if cut
    diverged: bool = False
    reason: str | None = None
    stopped_by_time: bool = False  # out of time: the weights are those at the fallback step
    out_of_time: str | None = None  # out of time before the fallback step: why (no network)


@dataclass(frozen=True)
class TimeRule:
    """The paper's rule for expensive trials (A.5.5): stop once ``budget`` seconds of training
    have passed (over every attempt of the trial) and use the network of step ``fallback``
    (2^18 of 2^19 in paper_large), or, before that step, no network. ``clock``: seconds."""

    budget: float | None = None
    fallback: int | None = None
    clock: object = time.monotonic


def strict_float32(num_threads: int | None = None) -> None:
    """This process's torch in true float32, on a GPU as on a CPU: matmuls at "highest"
    precision and TF32 off for CUDA matmuls and cuDNN (the paper trains and evaluates in
    float32; the float32 rounding bounds of ``workers.measures.precision`` assume it;
    ``bench/gpu_check.py`` checks it inside a worker). With ``num_threads``, also its CPU
    threads. Every process that trains or measures a network calls it first."""
    if num_threads is not None:
        torch.set_num_threads(max(1, num_threads))
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def make_optimizer(name: str, params, lr: float, train: TrainSpec) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``params``; the mini-batch ones with ``train.weight_decay``
    as coupled L2 (lambda w added to the gradient), L-BFGS without it (``_train_lbfgs`` adds
    the penalty to its loss)."""
    wd = train.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if name == "lbfgs":
        return torch.optim.LBFGS(
            params, lr=lr, max_iter=train.check_every, history_size=train.lbfgs_history,
            tolerance_grad=train.lbfgs_tolerance_grad,
            tolerance_change=train.lbfgs_tolerance_change, line_search_fn="strong_wolfe",
        )
    raise ValueError(f"optimizer: unknown value {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def decayed_lr(lr0: float, epoch: int, train: TrainSpec) -> float:
    """lr0 x lr_decay per ``lr_decay_epochs`` whole epochs completed (A.5: x 0.1 every 500)."""
    return lr0 * train.lr_decay ** (int(epoch) // train.lr_decay_epochs)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch as the mini-batch loop draws it: one pass over a fresh
    permutation of the n training points in batches of ``batch_size``, the remainder dropped,
    so floor(n / B) steps (one step, of the whole set, when B >= n)."""
    return max(1, n // batch_size)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def _all_correct(model: nn.Module, data: Data) -> bool:
    return accuracy(model, data.x_train.flatten(1), data.y_train) == 1.0


def train_model(
    model: nn.Module, data: Data, optimizer: str, lr: float, batch_size: int | None,
    train: TrainSpec, seed: int, augment: bool = False, checkpoint=None,
    time_rule: TimeRule | None = None,
) -> TrainOutcome:
    """Train ``model`` in place. ``checkpoint`` (a ``workers.checkpoint.Checkpointer``): resume
    from the state it holds, if any, and save the state whenever it is due; the numbers are
    those of an uninterrupted run (bitwise on CPU). ``time_rule``: stop when the time budget
    runs out (``TimeRule``; mini-batch training falls back to its fallback step, L-BFGS, whose
    iterations stay below any fallback step of the paper, has none)."""
    try:
        if optimizer == "lbfgs":
            out = _train_lbfgs(model, data, lr, train, checkpoint, time_rule)
        else:
            out = _train_minibatch(model, data, optimizer, lr, batch_size, train, seed,
                                   augment, checkpoint, time_rule)
    except RuntimeError as e:  # an update whose step size overflows float32 (Adam at lr 1e38)
        if "without overflow" not in str(e):
            raise
        return TrainOutcome(0, True, f"non-finite update: {e}")
    if not out.diverged and out.out_of_time is None and not all(
            bool(torch.isfinite(p).all()) for p in model.parameters()):
        # the loss checks see the loss before each update; the last update (or the fallback
        # step's) can still make the weights non-finite
        return TrainOutcome(out.steps, True, f"non-finite weights after step {out.steps} (the "
                            "last update)", out.stopped_by_time)
    return out


def _timer(time_rule: TimeRule | None, saved: dict | None):
    """(the rule if it has a budget else None, elapsed(): training seconds over every attempt,
    those of earlier attempts from the checkpoint ``saved``)."""
    rule = time_rule if time_rule is not None and time_rule.budget else None
    spent = float(saved.get("elapsed", 0.0)) if saved is not None else 0.0
    began = rule.clock() if rule else 0.0
    return rule, (lambda: spent + (rule.clock() - began if rule else 0.0))


def _out_of_time(rule: TimeRule, done: int, lbfgs: bool = False) -> str:
    if lbfgs:
        at = " (L-BFGS has no fallback step)"
    elif not rule.fallback:
        at = " (no fallback step: train.fallback_steps)"
    elif done < rule.fallback:
        at = f", before the fallback step {rule.fallback}"
    else:
        at = (f", after the fallback step {rule.fallback}, whose network this attempt does not "
              "have (train.checkpoint_every keeps it across attempts)")
    return f"out of time: the time budget of {rule.budget:g} s ran out at step {done}{at}"


def _train_minibatch(model, data, optimizer, lr, batch_size, train, seed, augment,
                     checkpoint=None, time_rule=None) -> TrainOutcome:
    dev = data.x_train.device
    n = len(data.y_train)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    opt = make_optimizer(optimizer, model.parameters(), lr, train)
    x_train, y_train = data.x_train, data.y_train
    perm, pos = torch.randperm(n, generator=gen, device=dev), 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
    current_lr = lr
    per_epoch = steps_per_epoch(n, batch_size)
    start = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:  # the loop's whole state as it was after step saved["step"]
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        perm, pos = saved["perm"].to(dev), int(saved["pos"])
        nonfinite = saved["nonfinite"].to(dev)
        current_lr = float(saved["lr"])
        start = int(saved["step"])
    rule, elapsed = _timer(time_rule, saved)
    fallback = None  # (weights, non-finite flag) at the fallback step
    if rule and rule.fallback and checkpoint is not None and start >= rule.fallback:
        fallback = checkpoint.load_fallback(rule.fallback)  # taken by an earlier attempt

    model.train()
    for step in range(start, train.steps):
        if pos + batch_size > n:  # a new epoch: reshuffle, drop the remainder
            perm, pos = torch.randperm(n, generator=gen, device=dev), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        new_lr = decayed_lr(lr, step // per_epoch, train)
        if new_lr != current_lr:
            _set_lr(opt, new_lr)
            current_lr = new_lr
        xb = x_train[idx]
        if augment:
            xb = augment_batch(xb, gen)
        loss = F.cross_entropy(model(xb.flatten(1)), y_train[idx])
        nonfinite |= ~torch.isfinite(loss.detach())  # no host sync per step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if done % train.check_every == 0 or done == train.steps:
            if bool(nonfinite):
                return TrainOutcome(done, True, f"non-finite training loss by step {done}")
            if train.early_stop and done < train.steps and _all_correct(model, data):
                return TrainOutcome(done)
        if rule and done < train.steps:
            if rule.fallback and done == rule.fallback:
                fallback = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                            nonfinite.clone())
                if checkpoint is not None:
                    checkpoint.save_fallback(done, *fallback)
            if elapsed() > rule.budget:
                if fallback is None:
                    return TrainOutcome(done, out_of_time=_out_of_time(rule, done))
                if bool(fallback[1]):  # (a network that diverged by then is no fallback)
                    return TrainOutcome(rule.fallback, True, "non-finite training loss by step "
                                        f"{rule.fallback} (the fallback step; out of time)")
                model.load_state_dict(fallback[0])
                return TrainOutcome(rule.fallback, stopped_by_time=True)
        if checkpoint is not None and done < train.steps and checkpoint.due(done):
            checkpoint.save(done, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "generator": gen.get_state(), "perm": perm, "pos": pos,
                                   "nonfinite": nonfinite, "lr": current_lr,
                                   "elapsed": elapsed()})
    return TrainOutcome(train.steps)


def _train_lbfgs(model, data, lr, train, checkpoint=None, time_rule=None) -> TrainOutcome:
    x, y = data.x_train.flatten(1), data.y_train
    opt = make_optimizer("lbfgs", model.parameters(), lr, train)
    budget = min(train.steps, train.lbfgs_max_iter)
    done = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:  # weights and the curvature history after saved["step"] iterations
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        done = int(saved["step"])
    rule, elapsed = _timer(time_rule, saved)
    model.train()

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if train.weight_decay:  # coupled L2: (lambda / 2) ||w||^2
            loss = loss + 0.5 * train.weight_decay * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    while done < budget:
        # One full batch per iteration, so an iteration is an epoch; chunks never straddle a
        # learning-rate decay boundary.
        to_decay = train.lr_decay_epochs - done % train.lr_decay_epochs
        chunk = min(train.check_every, budget - done, to_decay)
        group = opt.param_groups[0]
        # Iterations, not function evaluations, bound a chunk: allow the strong-Wolfe search
        # its full 25 evaluations per iteration.
        group["max_iter"], group["max_eval"] = chunk, chunk * 25
        _set_lr(opt, decayed_lr(lr, done, train))
        state = opt.state[group["params"][0]]
        before = state.get("n_iter", 0)
        loss = opt.step(closure)
        ran = state.get("n_iter", 0) - before
        done += ran
        if not torch.isfinite(loss) or any(
            not torch.isfinite(p).all() for p in model.parameters()
        ):
            return TrainOutcome(done, True, f"non-finite loss or weights by iteration {done}")
        if ran < chunk:  # stopped early: gradient or change below tolerance
            break
        if train.early_stop and done < budget and _all_correct(model, data):
            break
        if rule and done < budget and elapsed() > rule.budget:  # (checked per chunk)
            return TrainOutcome(done, out_of_time=_out_of_time(rule, done, lbfgs=True))
        if checkpoint is not None and done < budget and checkpoint.due(done):
            checkpoint.save(done, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "elapsed": elapsed()})
    return TrainOutcome(done)
