"""The sweep directory as a value: its storage, its layout and its index in one object.

``SweepDir.of(location)`` (a path, a filesystem URI, a ``Store`` or a ``SweepDir``) is a
:class:`workers.results.storage.Store`, so every function that takes a location or a Store takes
it too; besides the Store's reads and writes it names the directory's files
(``workers.results.layout``), lists the trials that have each kind of file, and answers the
index (``workers.results.index``). Nothing here writes except :meth:`SweepDir.journal`'s
journal and the Store's own write methods.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from workers.results import layout
from workers.results.index import (
    Journal, StatusCounts, read_journal, result_ids, result_index, status_counts, trial_statuses,
    valid_trial_ids,
)
from workers.results.layout import MeasureName
from workers.results.storage import Store, check_location, expand, store


class SweepDir(Store):
    """A sweep directory (see the module docstring). Paths given to and returned by its
    methods are relative to it, with ``/`` separators, as the Store's."""

    @classmethod
    def of(cls, location: "str | Path | Store") -> "SweepDir":
        """The SweepDir of ``location``: a SweepDir as it is, a Store's own filesystem reused,
        a path or URI opened once per process (``~`` expanded, ``storage.expand``)."""
        if isinstance(location, SweepDir):
            return location
        if isinstance(location, Store):
            d = cls.__new__(cls)
            d.__dict__.update(location.__dict__)  # the same filesystem, not opened again
            return d
        return _cached(expand(location))

    @classmethod
    def checked(cls, location: "str | Path | Store", key: str = "out",
                write: bool = False) -> "SweepDir":
        """``SweepDir.of(location)`` once it answers and, with ``write``, can be written
        (``storage.check_location``: what a command checks before any work); raises its
        Unreachable (a ValueError, one line naming ``key``)."""
        return cls.of(check_location(location, key, write))

    def __repr__(self) -> str:
        return f"SweepDir({self.location!r})"

    # ---- the layout (relative paths)
    trial_file = staticmethod(layout.trial_file)
    weights_file = staticmethod(layout.weights_file)
    extra_file = staticmethod(layout.extra_file)
    measure_file = staticmethod(layout.measure_file)
    checkpoint_file = staticmethod(layout.checkpoint_file)
    fallback_file = staticmethod(layout.fallback_file)
    running_file = staticmethod(layout.running_file)
    aside_file = staticmethod(layout.aside_file)

    @property
    def planned(self) -> bool:
        """Whether the directory holds a plan (``plan.parquet``)."""
        return self.is_file(layout.PLAN_FILE)

    @property
    def has_trials(self) -> bool:
        """Whether the directory has a ``trials/`` directory (a planned sweep has one)."""
        return self.is_dir(layout.TRIALS)

    def locate(self, rel: str) -> str:
        """``rel`` as what another reader opens: an OS path when local, else a URI."""
        return self.path(rel) if self.local else self.uri(rel)

    # ---- the files present, by trial (the inverse of the layout)
    def trial_ids(self) -> list[str]:
        """The trial ids that have a result file (valid or not), sorted."""
        return result_ids(self)

    def trial_stats(self) -> dict[str, tuple[int, int]]:
        """trial_id -> (size, mtime_ns) of every result file."""
        return {layout.trial_id_of(e.name): (e.size, e.mtime_ns)
                for e in self.list(layout.TRIALS, layout.RESULT_SUFFIX)}

    def extra_ids(self, kind: str) -> set[str]:
        """The trials that have a table of ``kind`` (CURVES, GRIDS)."""
        return {layout.trial_id_of(e.name) for e in self.list(kind, layout.RESULT_SUFFIX)}

    def weights_ids(self) -> set[str]:
        """The trials that have a weights file."""
        return {layout.trial_id_of(e.name, layout.WEIGHTS_SUFFIX)
                for e in self.list(layout.WEIGHTS, layout.WEIGHTS_SUFFIX)}

    def measure_names(self) -> list[tuple[str, MeasureName]]:
        """(file name, its key) of every measure value file, sorted by name; names that are
        not a value file's are left out."""
        out = []
        for e in self.list(layout.MEASURES, layout.RESULT_SUFFIX):
            key = layout.parse_measure_name(e.name)
            if key is not None:
                out.append((e.name, key))
        return out

    # ---- the index (workers.results.index)
    def statuses(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """``index.trial_statuses``: (trial_id -> status of every valid file, invalid files)."""
        return trial_statuses(self)

    def index(self, trust_journal: bool = False) -> dict[str, dict]:
        """``index.result_index``: trial_id -> {"status", "retryable"}."""
        return result_index(self, trust_journal)

    def valid(self) -> dict[str, str]:
        """``index.valid_trial_ids``: trial_id -> status of every readable result file."""
        return valid_trial_ids(self)

    def status_counts(self, planned) -> StatusCounts:
        """``index.status_counts`` of the trial ids ``planned``."""
        return status_counts(self, planned)

    def read_journal(self) -> dict[str, tuple[str, int, int]]:
        return read_journal(self)

    def journal(self, **kwargs) -> Journal:
        """A new driver session's journal (writes ``journal/<session>.tsv``)."""
        return Journal(self, **kwargs)


@lru_cache(maxsize=16)
def _cached(location: str) -> SweepDir:
    return SweepDir.of(store(location))  # (the Store's filesystem, if it is open already)
