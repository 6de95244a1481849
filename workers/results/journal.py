"""Part of ``workers.results.index`` (the index: journal, resume and status counts); this import
path is kept for one release (it is the same module)."""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("workers.results.index")
