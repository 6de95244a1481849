"""Everything one trial does: data, model, training, metrics, result files.

The science here (``models``, ``metrics``, ``activations``) is plain PyTorch and usable on a
researcher's own modules without Ray or Hydra.
"""

from workers.models import build_mlp, load_model

__all__ = ["build_mlp", "load_model"]
