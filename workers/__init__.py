"""Everything one trial does: data, model, training, metrics, result files.

The science here (``models``, ``metrics``, ``activations``, ``transitions``) is plain PyTorch
and usable on a researcher's own modules without Ray or Hydra. ``build_mlp`` and ``load_model``
are imported lazily, so that tools that only read result files (``sweep status``) do not pay for
importing torch.
"""

__all__ = ["build_mlp", "load_model"]


def __getattr__(name: str):
    if name in __all__:
        from workers import models

        return getattr(models, name)
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
