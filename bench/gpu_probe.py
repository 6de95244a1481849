"""Two probe measures for `bench/gpu_check.py` (loaded through ``measure_modules``): what the
trial's own worker process trained with, read in that process right after training.

``probe_float32_strict``: 1.0 when float32 products are IEEE float32 (no TF32:
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` False,
``torch.get_float32_matmul_precision() == "highest"``, ``workers.layers.float32_products_exact``)
and every parameter is float32; else 0.0. ``probe_on_cuda``: 1.0 when the parameters are on a
CUDA device, else 0.0.
"""

from __future__ import annotations

import torch

from workers.measures import register


def float32_strict(model: torch.nn.Module) -> bool:
    """Whether this process computes float32 products in float32 and ``model`` is float32."""
    from workers.layers import float32_products_exact

    return (not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            and torch.get_float32_matmul_precision() == "highest" and float32_products_exact()
            and all(p.dtype == torch.float32 for p in model.parameters()))


@register("probe_float32_strict", source="bench/gpu_probe.py (a check, not a measure)",
          needs=("model",))
def probe_float32_strict(inputs):
    """1.0 when the trial trained in true float32 (see the module), else 0.0."""
    return float(float32_strict(inputs.model))


@register("probe_on_cuda", source="bench/gpu_probe.py (a check, not a measure)",
          needs=("model",))
def probe_on_cuda(inputs):
    """1.0 when the trained network is on a CUDA device, else 0.0."""
    return float(next(inputs.model.parameters()).device.type == "cuda")
