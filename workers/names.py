"""The names a configuration chooses among, declared once and importable without torch.

``workers.activations`` defines each activation (and refuses to load if its table and
``ACTIVATION_NAMES`` differ); ``workers.train`` builds each optimizer. The configuration's
checks (``sweep.config``), ``sweep show --keys`` and the other commands that only read or check
a configuration take the names from here, so that they answer without importing torch
(tests/test_cli_imports.py).
"""

from __future__ import annotations

# the non-linearities of A.4, in the order the configuration lists them
ACTIVATION_NAMES: tuple[str, ...] = ("relu", "relu6", "tanh", "hardtanh", "hardsigmoid")
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop", "lbfgs")
# the optimizers that draw mini-batches (L-BFGS is full-batch)
MINIBATCH_OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
