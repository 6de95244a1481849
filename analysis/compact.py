"""Moved to ``workers.results.compact``; this import path is kept for one release (it is the same module)."""

import importlib as _importlib
import sys as _sys
import warnings as _warnings

_warnings.warn("analysis.compact moved to workers.results.compact; the old name goes in the next release",
               DeprecationWarning, stacklevel=2)
_sys.modules[__name__] = _importlib.import_module("workers.results.compact")
