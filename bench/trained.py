"""A trial's network trained as the trial trains it, for the benchmarks of the measures."""

from __future__ import annotations

import time

from workers.data import load_data
from workers.models import build_mlp
from workers.results.spec import TrialSpec
from workers.train import train_model


def trained(spec: TrialSpec, data_root=None):
    """(the trained model in eval mode, its data, the training's seconds) of ``spec``, on the
    CPU, as ``workers.trial`` trains it."""
    d = spec.data
    data = load_data(d.name, data_root, False, d.train_size, d.test_size, d.random_labels,
                     d.seed, "cpu")
    model = build_mlp(data.input_dim, spec.width, spec.depth, data.info.num_classes,
                      spec.activation, spec.init_scale, spec.seed)
    t = time.perf_counter()
    train_model(model, data, spec.optimizer, spec.lr, spec.batch_size, spec.train, spec.seed,
                d.augment)
    return model.eval(), data, time.perf_counter() - t
