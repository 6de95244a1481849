"""Where a sweep directory lives: a local (or shared POSIX) path, or any pyarrow filesystem URI.

``out=/shared/runs/a`` and ``out=runs/a`` are local paths. ``out=s3://bucket/runs/a``,
``gs://...``, ``hdfs://...`` and ``file:///abs/path`` go through
``pyarrow.fs.FileSystem.from_uri``; credentials come from the usual environment of each
filesystem (e.g. ``AWS_*`` variables or the instance role for S3) on the driver and on every
worker.

Every read and write of a sweep directory goes through :class:`Store`, so the rules hold on
every backend:

* a file appears whole or not at all. Local paths and filesystems with an atomic rename (local,
  HDFS) write a temporary sibling and rename it; object stores (S3, GCS) write with one
  streamed PUT, which becomes visible only when it completes;
* a file written once (a result, a measure value) is written only if it is not there yet
  (``write_new``), so a stale attempt of a trial cannot replace what another attempt wrote;
* nothing is deleted: a file that has to make way is moved aside (``move``).

A URI, even ``file://``, uses only the pyarrow filesystem API; a plain path uses ``os`` calls,
which are faster for listing 10^5 files.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own files are 0600
# filesystems whose objects appear only when their single upload completes (no rename needed)
_PUT_ATOMIC = ("s3", "gcs")


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    mtime_ns: int


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def expand(location: str | Path) -> str:
    """``location`` with ``~`` expanded as a shell expands it (``os.path.expanduser``: a leading
    ``~`` or ``~user``; ``./~`` and ``a/~`` stay literal), unless it is a URI (``s3://...``,
    returned as it is). The one meaning of ``~`` in every path the tool takes: ``out=``, a
    SWEEP_DIR argument, ``dataset.root``, ``measure_modules``, ``analysis.load_*``; a quoted
    ``out="~/x"`` (which no shell expands) is ``$HOME/x``, never ``./~/x``."""
    location = str(location)
    return location if is_uri(location) else os.path.expanduser(location)


class Store:
    """A sweep directory at ``location`` (a path or a filesystem URI). Paths given to the
    methods are relative to it, with ``/`` separators."""

    def __init__(self, location: str | Path, filesystem: pafs.FileSystem | None = None):
        self.location = str(location)
        if filesystem is not None:  # an explicit filesystem (tests, custom setups)
            self.fs, self.root = filesystem, self.location.rstrip("/")
        elif is_uri(location):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(self.location)
            except Exception as e:
                raise ValueError(f"out: cannot open {self.location!r} as a pyarrow filesystem "
                                 f"URI ({type(e).__name__}: {e}); use a local path or a URI "
                                 "such as s3://bucket/prefix, gs://..., file:///abs/path") from None
            self.root = self.root.rstrip("/")
        else:
            self.location = expand(self.location)
            self.fs, self.root = None, str(Path(self.location))
        self.local = self.fs is None
        self._put_atomic = self.fs is not None and self.fs.type_name in _PUT_ATOMIC

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    def __str__(self) -> str:
        return self.location

    # ---- paths
    def path(self, rel: str = "") -> str:
        """The path of ``rel`` on this store's filesystem (an OS path when local)."""
        if not rel:
            return self.root
        if rel.startswith("/"):
            raise ValueError(f"{rel!r}: a path inside the sweep directory must be relative")
        return os.path.join(self.root, rel) if self.local else posixpath.join(self.root, rel)

    def uri(self, rel: str = "") -> str:
        """``rel`` as a location string another Store (or the user) can open."""
        return posixpath.join(self.location.rstrip("/"), rel) if rel else self.location

    # ---- queries
    def _info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        if self.local:
            return os.path.exists(self.path(rel))
        return self._info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        if self.local:
            return os.path.isfile(self.path(rel))
        return self._info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        if self.local:
            return os.path.isdir(self.path(rel))
        return self._info(rel).type == pafs.FileType.Directory

    def kind(self, rel: str = "") -> str:
        """"none", "file" or "dir" for ``rel``, from one look (on an object store a directory
        is a prefix: two looks, ``exists`` then ``is_dir``, can see another writer's last
        object under it appear or go between them)."""
        if self.local:
            path = self.path(rel)
            return "dir" if os.path.isdir(path) else "file" if os.path.lexists(path) else "none"
        t = self._info(rel).type
        return {pafs.FileType.NotFound: "none", pafs.FileType.Directory: "dir"}.get(t, "file")

    def entry(self, rel: str) -> Entry:
        """Size and modification time of a file; OSError if there is none."""
        if self.local:
            st = os.stat(self.path(rel))
            return Entry(posixpath.basename(rel), st.st_size, st.st_mtime_ns)
        info = self._info(rel)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(self.uri(rel))
        return Entry(info.base_name, info.size, info.mtime_ns or 0)

    def list(self, rel: str, suffix: str = "") -> list[Entry]:
        """The files directly in directory ``rel`` whose names end in ``suffix`` (hidden ones,
        such as temporary files, excluded), sorted by name; empty if there is no directory."""
        out = []
        if self.local:
            try:
                with os.scandir(self.path(rel)) as it:
                    for e in it:
                        if e.name.endswith(suffix) and not e.name.startswith(".") and e.is_file():
                            st = e.stat()
                            out.append(Entry(e.name, st.st_size, st.st_mtime_ns))
            except (FileNotFoundError, NotADirectoryError):
                return []
        else:
            sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
            for info in self.fs.get_file_info(sel):
                name = info.base_name
                if info.type == pafs.FileType.File and name.endswith(suffix) and not name.startswith("."):
                    out.append(Entry(name, info.size, info.mtime_ns or 0))
        out.sort(key=lambda e: e.name)
        return out

    def is_empty(self) -> bool:
        if self.local:
            return not any(os.scandir(self.root))
        sel = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        return not self.fs.get_file_info(sel)

    # ---- reads
    def read_bytes(self, rel: str) -> bytes:
        if self.local:
            with open(self.path(rel), "rb") as f:
                return f.read()
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def parquet_file(self, rel: str) -> pq.ParquetFile:
        if self.local:
            return pq.ParquetFile(self.path(rel))
        return pq.ParquetFile(self.fs.open_input_file(self.path(rel)))

    def read_parquet(self, rel: str, **kwargs):
        # a local path is an OS path as it stands (pyarrow would otherwise interpret it itself)
        fs = self.fs if self.fs is not None else pafs.LocalFileSystem()
        return pq.read_table(self.path(rel), filesystem=fs, **kwargs)

    # ---- writes
    def makedirs(self, rel: str = "") -> None:
        if self.local:
            os.makedirs(self.path(rel), exist_ok=True)
        else:
            self.fs.create_dir(self.path(rel), recursive=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` so that a reader sees the old state or the whole file."""
        if self.local:
            self._write_local(self.path(rel), data)
            return
        path = self.path(rel)
        if self._put_atomic:  # object stores have no directories to create
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        parent, name = posixpath.split(path)
        tmp = posixpath.join(parent, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except Exception:
                pass
            raise

    @staticmethod
    def _write_local(path: str, data: bytes, exclusive: bool = False) -> bool:
        """Write ``path`` through a temporary sibling. With ``exclusive`` the temporary file is
        hard-linked to ``path``, which fails if ``path`` exists (atomic, NFS included); where
        the filesystem has no hard links, ``path`` is checked and then renamed over. Returns
        whether ``path`` was written."""
        parent = os.path.dirname(path) or "."
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, _FILE_MODE)  # readable by other nodes' users, as open() would make it
            if not exclusive:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some FUSE and SMB mounts): check, then rename
                if os.path.lexists(path):
                    return False
                os.replace(tmp, path)
            return True
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def write_new(self, rel: str, data: bytes) -> bool:
        """Write ``data`` to ``rel`` as ``write_bytes`` does, unless a file is there already;
        returns whether it was written. This is the guard of a file written once (a trial's
        result, a measure value): a stale attempt that finishes after another attempt wrote
        the file leaves it as it is. On a local or shared POSIX path it is atomic (a hard link,
        ``_write_local``); on an object store (S3, GCS) and other pyarrow filesystems the file
        is looked up and then written, so two writers that both look before either PUT
        completes both write, the later PUT winning (both whole files)."""
        if self.local:
            return self._write_local(self.path(rel), data, exclusive=True)
        if self._info(rel).type != pafs.FileType.NotFound:
            return False
        self.write_bytes(rel, data)
        return True

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_parquet(self, rel: str, table, **kwargs) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, **kwargs)
        self.write_bytes(rel, buf.getvalue())

    def write_parquet_new(self, rel: str, table, **kwargs) -> bool:
        """``write_parquet`` unless a file is at ``rel`` already (``write_new``); returns
        whether it was written."""
        buf = io.BytesIO()
        pq.write_table(table, buf, **kwargs)
        return self.write_new(rel, buf.getvalue())

    def delete(self, rel: str) -> None:
        """Remove one file (the driver lock, checkpoints, running trials' markers: results are
        never deleted)."""
        if self.local:
            os.unlink(self.path(rel))
        else:
            self.fs.delete_file(self.path(rel))

    def names(self) -> list[str]:
        """Every entry directly in the directory (files and directories, hidden ones too)."""
        if self.local:
            return sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []
        sel = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    def move(self, src: str, dst: str) -> None:
        """Move a file within the store (a copy and delete on object stores)."""
        if self.local:
            os.makedirs(os.path.dirname(self.path(dst)), exist_ok=True)
            os.replace(self.path(src), self.path(dst))
        else:
            self.fs.create_dir(posixpath.dirname(self.path(dst)), recursive=True)
            self.fs.move(self.path(src), self.path(dst))


    @contextlib.contextmanager
    def staging(self, rel: str = ""):
        """A fresh local directory to write files into (for writers that need a path, such as
        matplotlib). On success its files are published under ``rel``, each atomically, after
        the files already at ``rel``'s top level are moved to ``rel/previous/<time>/`` (nothing
        is overwritten). On failure nothing is published: the files are first written beside
        (``rel/.incoming-<time>/``, hidden), and only once all are there are the old ones moved
        aside and the new ones moved in (renames), so a write that fails (a full disk) leaves
        the previous files where they were and nothing of the new ones; a move that fails is
        undone (the new files out, the previous ones back), or the OSError says where the
        previous files are."""
        with tempfile.TemporaryDirectory(prefix="sweep-stage-") as tmp:
            yield Path(tmp)
            join = (lambda n: posixpath.join(rel, n)) if rel else (lambda n: n)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**9:09d}"
            incoming = join(f".incoming-{stamp}")
            files = [p.relative_to(tmp).as_posix() for p in sorted(Path(tmp).rglob("*"))
                     if p.is_file()]
            existed = not rel or self.exists(rel)
            written = []
            try:
                for name in files:
                    self.write_bytes(posixpath.join(incoming, name), (Path(tmp) / name).read_bytes())
                    written.append(name)
            except BaseException:
                for name in written:
                    try:
                        self.delete(posixpath.join(incoming, name))
                    except OSError:
                        pass
                self._remove_empty_dirs(incoming if existed else rel)
                raise
            old = [e.name for e in (self.list(rel) if self.exists(rel) else [])]
            aside, placed = [], []
            try:
                for name in old:
                    self.move(join(name), join(f"previous/{stamp}/{name}"))
                    aside.append(name)
                for name in files:
                    self.move(posixpath.join(incoming, name), join(name))
                    placed.append(name)
            except BaseException as e:  # the new files out, the previous ones back
                undone = True
                for name in placed:
                    try:
                        self.move(join(name), posixpath.join(incoming, name))
                    except OSError:
                        undone = False
                for name in aside:
                    try:
                        self.move(join(f"previous/{stamp}/{name}"), join(name))
                    except OSError:
                        undone = False
                for name in files:
                    try:
                        self.delete(posixpath.join(incoming, name))
                    except OSError:
                        pass
                self._remove_empty_dirs(incoming)
                self._remove_empty_dirs(join("previous"))
                if not undone and isinstance(e, OSError):
                    raise PartlyPublished(e.errno, f"{e.strerror or e}; and the previous files "
                                          "could not all be put back: they are in "
                                          f"{self.uri(join(f'previous/{stamp}'))}") from e
                raise
            self._remove_empty_dirs(incoming)

    def _remove_empty_dirs(self, rel: str) -> None:
        """Remove the directory ``rel`` and its subdirectories where they hold no file (local
        paths; object stores have no empty directories to leave)."""
        if not self.local or not os.path.isdir(self.path(rel)):
            return
        for root, dirs, names in os.walk(self.path(rel), topdown=False):
            if not names:
                try:
                    os.rmdir(root)
                except OSError:
                    pass


class PartlyPublished(OSError):
    """``Store.staging`` failed while moving the files in, and could not put all the previous
    files back: the message says where they are."""


@lru_cache(maxsize=16)
def _cached(location: str) -> Store:
    return Store(location)


def store(location: "str | Path | Store") -> Store:
    """The Store of a location (cached per process: opening an S3 filesystem costs a round
    trip)."""
    if isinstance(location, Store):
        return location
    return _cached(expand(location))  # (expanded first: the cache outlives a change of HOME)


class Unreachable(ValueError):
    """A location that cannot be reached, or not written where a command writes; the message
    is one line: what is wrong and what to try."""


_ACCESS_HINTS = {
    "s3": "the endpoint (AWS_ENDPOINT_URL{endpoint}), the network and the credentials "
          "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance role)",
    "gcs": "the network and the credentials (GOOGLE_APPLICATION_CREDENTIALS)",
}


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def check_location(location: "str | Path | Store", key: str = "out",
                   write: bool = False) -> Store:
    """The Store of ``location`` once it answers, before a command does any work: a filesystem
    URI's filesystem reachable (and, on S3 and GCS, its bucket existing); with ``write``, a file
    can be written there (on a URI a hidden probe object written and removed; on a local path,
    or ``file://``, a temporary file in the nearest existing directory). ``key`` names the
    location in the message (``out``, ``SWEEP_DIR``, ``--out``). Raises Unreachable (a
    ValueError), or ValueError for a URI pyarrow cannot open; each message is one line."""
    st = store(location)
    if st.local or st.fs.type_name == "local":
        if write:
            _check_local_write(st.root, st.location, key)
        return st
    kind = st.fs.type_name
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    hint = _ACCESS_HINTS.get(kind, "the network and the credentials of this filesystem").format(
        endpoint=f"={endpoint}" if endpoint else "")
    try:
        if kind in ("s3", "gcs"):
            bucket = st.root.split("/")[0]
            if st.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                at = f" at {endpoint}" if kind == "s3" and endpoint else ""
                raise Unreachable(f"{key}: {st.location}: the bucket {bucket!r} does not exist"
                                  f"{at}; create it first, or choose an existing bucket")
        st.fs.get_file_info(st.root)
    except OSError as e:
        raise Unreachable(f"{key}: cannot reach {st.location} ({_first_line(e)}); check "
                          f"{hint}, or use a local path") from None
    if write:
        probe = f"{PROBE_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        try:
            st.write_bytes(probe, b"")
            _remove_probe(st, probe)
        except OSError as e:
            raise Unreachable(f"{key}: cannot write to {st.location} ({_first_line(e)}); "
                              "check that the credentials may write there, or choose another "
                              "location") from None
    return st


def _remove_probe(st: Store, probe: str) -> None:
    """Remove the write probe ``probe`` of an object store. The empty directory markers that
    pyarrow leaves where the probe's prefix was new stay: pyarrow removes a marker only with
    the recursive ``delete_dir``, which could take a peer driver's probe or lock written under
    the same new prefix at the same moment (a check of the listing first still leaves a window;
    a review reproduced it). Another driver's cleanup may have taken this probe already."""
    try:
        st.delete(probe)
    except FileNotFoundError:
        pass


PROBE_BYTES = 65536  # what the write probe of a local path writes (about a result file or two)
PROBE_PREFIX = ".sweep-write-probe-"  # the write probes' names (removed at once)


def _check_local_write(root: str, location: str, key: str) -> None:
    """Unreachable unless a file can be created in the nearest existing directory of local
    path ``root`` (a temporary file, removed at once)."""
    path = os.path.abspath(root)
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise Unreachable(f"{key}: {location}: {parent} is a file, not a directory; choose "
                          "another location")
    try:  # (some bytes, not an empty file: a full disk still has inodes for that)
        fd, tmp = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * PROBE_BYTES)
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise Unreachable(f"{key}: cannot write to {location} ({e.strerror} in {parent}); "
                          "choose a directory you can write to") from None
