"""Fully connected, bias-free networks of A.4/A.5.

``depth`` is the number of weight matrices (depth 2 = one hidden layer); ``width`` the number of
units in each hidden layer. Weights are drawn from N(0, s^2 v / n_in) with v = 2 for ReLU, ReLU6
and HardSigmoid and v = 1 for Tanh and HardTanh (A.5); s is ``init_scale``, the paper's
"weight std multiplier".
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from workers.activations import PaperActivation, get_activation


def build_mlp(
    input_dim: int,
    width: int,
    depth: int,
    num_classes: int,
    activation: str,
    init_scale: float = 1.0,
    seed: int = 0,
) -> nn.Sequential:
    """Build a bias-free MLP: ``depth`` Linear layers with the activation between them.

    The returned ``nn.Sequential`` alternates ``nn.Linear(bias=False)`` and
    :class:`~workers.activations.PaperActivation`; it maps [N, input_dim] to logits
    [N, num_classes]. Initialization is deterministic given ``seed`` (its own generator; the
    global torch RNG is not touched).
    """
    if depth < 2:
        raise ValueError(f"depth: must be >= 2 (number of weight matrices), got {depth}")
    if width < 1:
        raise ValueError(f"width: must be >= 1, got {width}")
    act = get_activation(activation)
    gen = torch.Generator().manual_seed(int(seed))
    dims = [input_dim] + [width] * (depth - 1) + [num_classes]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        lin = nn.Linear(n_in, n_out, bias=False)
        std = init_scale * math.sqrt(act.init_variance / n_in)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n_out, n_in, generator=gen) * std)
        layers.append(lin)
        if i < depth - 1:
            layers.append(PaperActivation(activation))
    return nn.Sequential(*layers)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class DamagedWeights(ValueError):
    """A trial's weights file that cannot be loaded into its network (truncated, not a
    safetensors file, or the weights of another network). The message names the file and the
    command that writes it again; ``trial_id`` and ``uri`` say which."""

    def __init__(self, sweep_dir, trial_id: str, uri: str, why: str):
        import shlex

        self.trial_id, self.uri = trial_id, uri
        again = shlex.join(["sweep", "measure", str(sweep_dir), "--retrain", trial_id])
        super().__init__(f"the weights file {uri} is damaged ({why}); train its network again "
                         f"(the weights only: the trial's result stays) with: {again}")


def load_model(sweep_dir: str | Path, trial_id: str) -> nn.Sequential:
    """Rebuild the trained network of ``trial_id`` from a sweep run with ``save_weights=true``.
    Raises FileNotFoundError without a weights file, DamagedWeights for one that cannot be
    loaded into the trial's network."""
    from safetensors.torch import load

    from workers.results.record import read_trial_summary
    from workers.results.layout import weights_file
    from workers.results.storage import store

    row = read_trial_summary(sweep_dir, trial_id)
    st = store(sweep_dir)
    rel = weights_file(trial_id)
    if not st.is_file(rel):
        raise FileNotFoundError(f"no saved weights for trial {trial_id} at "
                                f"{st.uri(rel)}; run the sweep with save_weights=true")
    model = build_mlp(
        int(row["input_dim"]), int(row["width"]), int(row["depth"]), int(row["num_classes"]),
        str(row["activation"]), float(row["init_scale"]), int(row["seed"]),
    )
    try:
        state = load(st.read_bytes(rel))
    except Exception as e:  # safetensors' own error: truncated, or not such a file
        raise DamagedWeights(sweep_dir, trial_id, st.uri(rel),
                             f"unreadable: {type(e).__name__}: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing or unexpected tensors, another shape
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise DamagedWeights(sweep_dir, trial_id, st.uri(rel), "the weights of another "
                             f"network: {' '.join(lines[1:3]) or lines[0]}") from None
    return model
