"""Data sets as tensors, loaded once per worker process (A.5).

Every input is normalized to zero mean and unit variance, i.e. put on the sphere of radius
sqrt(d). Images are kept as [N, C, H, W] float32 so augmentation can shift them; the model sees
them flattened. No DataLoader: a training step indexes the tensors directly.

Where the files come from:
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images), split into 1347 train and 450
  test images by a permutation seeded with the data seed.
- ``fashion_mnist``: IDX files (optionally .gz) under ``root``; default is where Debian's
  ``dataset-fashion-mnist`` installs them.
- ``mnist``: IDX files as torchvision writes them (``root/MNIST/raw``) or directly in ``root``.
- ``cifar10`` / ``cifar100``: the python pickles as torchvision writes them
  (``root/cifar-10-batches-py``, ``root/cifar-100-python``), centre-cropped to 24x24 (A.5.5).
Reading needs only numpy; torchvision is used only when ``download=True``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# torch: imported by the functions that make tensors, so that DATASETS and the checks of a
# configuration load without it (tests/test_cli_imports.py)
if TYPE_CHECKING:  # (annotations only)
    import torch

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_ROOT = "~/.cache/sensitivity-sweep/data"
DIGITS_TEST_SIZE = 450


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    train_size: int
    test_size: int
    num_classes: int
    image_shape: tuple[int, int, int]  # C, H, W after any crop


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1797 - DIGITS_TEST_SIZE, DIGITS_TEST_SIZE, 10, (1, 8, 8)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 60000, 10000, 10, (1, 28, 28)),
    "mnist": DatasetInfo("mnist", 60000, 10000, 10, (1, 28, 28)),
    "cifar10": DatasetInfo("cifar10", 50000, 10000, 10, (3, 24, 24)),
    "cifar100": DatasetInfo("cifar100", 50000, 10000, 100, (3, 24, 24)),
}


def planned_sizes(spec) -> tuple[int, int]:
    """(train points, test points) a trial (``workers.results.spec.TrialSpec``) uses: its subset sizes,
    or the whole splits. One meaning in the plan and in every result record, failed or not."""
    info = DATASETS[spec.data.name]
    return spec.data.train_size or info.train_size, spec.data.test_size or info.test_size


class DataError(RuntimeError):
    """A data set that cannot be found or read; the message says where and how to get it."""


class DataMissing(DataError):
    """The data set's files are not where this process looks (or cannot be fetched here): a
    property of the machine, not of the trial, so a trial that hits it may run elsewhere."""


@dataclass
class Data:
    x_train: torch.Tensor  # [N, C, H, W] float32, each image zero mean, unit variance
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DatasetInfo

    @property
    def input_dim(self) -> int:
        c, h, w = self.info.image_shape
        return c * h * w


def default_root(name: str) -> str:
    if name == "fashion_mnist":
        return FASHION_MNIST_DEFAULT_ROOT
    return os.path.expanduser(DEFAULT_ROOT)


# ---------------------------------------------------------------------------------------------
# File formats


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says {shape}, file holds {data.size} values")
    return data.reshape(shape).copy()  # writable, detached from the file buffer


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_dirs(name: str, root: Path) -> list[Path]:
    if name == "mnist":
        return [root / "MNIST" / "raw", root]
    return [root / "FashionMNIST" / "raw", root]


def _cifar_dir(name: str, root: Path) -> Path:
    return root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")


def _cifar_files(name: str, root: Path) -> dict[str, list[Path]]:
    d = _cifar_dir(name, root)
    if name == "cifar10":
        return {"train": [d / f"data_batch_{i}" for i in range(1, 6)], "test": [d / "test_batch"]}
    return {"train": [d / "train"], "test": [d / "test"]}


def _how_to_get(name: str, root: Path) -> str:
    if name == "fashion_mnist":
        return (
            f"install the Debian package (apt-get install dataset-fashion-mnist) or put the IDX "
            f"files in {root} or set dataset.root=DIR"
        )
    return (
        f"set dataset.download=true to fetch it with torchvision into {root} "
        f"(needs internet and `pip install torchvision`), or set dataset.root=DIR to a copy"
    )


def missing_files(name: str, root: str | Path) -> list[str]:
    """Names of the files ``name`` needs that are not under ``root`` (empty when all present)."""
    root = Path(os.path.expanduser(root))
    if name == "digits":
        return []
    if name in ("fashion_mnist", "mnist"):
        dirs = _idx_dirs(name, root)
        stems = [s for pair in _IDX_STEMS.values() for s in pair]
        return [s for s in stems if _find(dirs, s) is None]
    if name in ("cifar10", "cifar100"):
        return [str(p) for ps in _cifar_files(name, root).values() for p in ps if not p.is_file()]
    raise DataError(f"dataset: unknown value {name!r}; allowed: {', '.join(DATASETS)}")


def check_available(name: str, root: str | None, download: bool) -> None:
    """Raise :class:`DataError` naming the root and how to obtain the data, if it is missing."""
    r = Path(os.path.expanduser(root or default_root(name)))
    missing = missing_files(name, r)
    if missing and not download:
        raise DataMissing(
            f"dataset {name}: files not found under {r} (missing {missing[0]}"
            f"{' and others' if len(missing) > 1 else ''}); {_how_to_get(name, r)}"
        )
    if missing and download:
        try:
            import torchvision  # noqa: F401
        except Exception as e:  # ImportError, or a torchvision built for another torch
            raise DataMissing(
                f"dataset {name}: dataset.download=true needs a working torchvision "
                f"(pip install 'sensitivity-sweep[download]'): {e}"
            ) from None


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _read_raw(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, C, H, W] (before any crop) and int64 labels [N]."""
    if name in ("fashion_mnist", "mnist"):
        dirs = _idx_dirs(name, root)
        img_stem, lab_stem = _IDX_STEMS[split]
        images = read_idx(_find(dirs, img_stem))
        labels = read_idx(_find(dirs, lab_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{name} {split}: images {images.shape} and labels {labels.shape} disagree")
        return images[:, None, :, :], labels.astype(np.int64)
    if name in ("cifar10", "cifar100"):
        key = b"labels" if name == "cifar10" else b"fine_labels"
        xs, ys = [], []
        for p in _cifar_files(name, root)[split]:
            with open(p, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)
    raise DataError(f"dataset: unknown value {name!r}; allowed: {', '.join(DATASETS)}")


def _digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).numpy()
    test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    return x[train], y[train], x[test], y[test]


# ---------------------------------------------------------------------------------------------
# Preprocessing


def normalize_per_input(x: torch.Tensor) -> torch.Tensor:
    """Each input (all pixels and channels) to zero mean and unit variance (A.5)."""
    import torch

    flat = x.reshape(len(x), -1).to(torch.float32)
    flat = flat - flat.mean(dim=1, keepdim=True)
    std = flat.pow(2).mean(dim=1, keepdim=True).sqrt()
    flat = flat / torch.where(std > 0, std, torch.ones_like(std))
    return flat.reshape(x.shape)


def centre_crop(x: np.ndarray, size: int) -> np.ndarray:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _subset(n_total: int, n: int | None, gen: torch.Generator) -> torch.Tensor | None:
    import torch

    if n is None or n == n_total:
        return None
    if not 1 <= n <= n_total:
        raise DataError(f"subset size {n} outside 1..{n_total}")
    return torch.randperm(n_total, generator=gen)[:n].sort().values


def augment_batch(x: torch.Tensor, gen: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """A.5.4 augmentation of a batch [B, C, H, W]: a random circular translation by up to
    ``max_shift`` pixels vertically and horizontally (wrap-around), then a horizontal flip with
    probability 0.5. Vectorized; the random numbers come from ``gen`` on ``x``'s device."""
    import torch

    b, _, h, w = x.shape
    dev = x.device
    dy = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=dev)
    dx = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=dev)
    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    rows = (torch.arange(h, device=dev)[None, :] - dy[:, None]) % h  # out[r] = in[r - dy]
    cols = (torch.arange(w, device=dev)[None, :] - dx[:, None]) % w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


# ---------------------------------------------------------------------------------------------
# Loading, cached per process

_CACHE: dict[tuple, Data] = {}


def load_data(
    name: str,
    root: str | None = None,
    download: bool = False,
    train_size: int | None = None,
    test_size: int | None = None,
    random_labels: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Data:
    """Load ``name`` as normalized tensors on ``device``; cached per process and arguments."""
    import torch

    if name not in DATASETS:
        raise DataError(f"dataset: unknown value {name!r}; allowed: {', '.join(DATASETS)}")
    key = (name, root, train_size, test_size, random_labels, seed, str(device))
    if key in _CACHE:
        return _CACHE[key]
    info = DATASETS[name]
    if name == "digits":
        xtr, ytr, xte, yte = _digits(seed)
    else:
        r = Path(os.path.expanduser(root or default_root(name)))
        if missing_files(name, r) and download:
            check_available(name, str(r), download)
            _download(name, r)
        check_available(name, str(r), False)
        xtr, ytr = _read_raw(name, r, "train")
        xte, yte = _read_raw(name, r, "test")
        if name.startswith("cifar"):
            xtr, xte = centre_crop(xtr, 24), centre_crop(xte, 24)
    gen = torch.Generator().manual_seed(seed)
    x_train = normalize_per_input(torch.from_numpy(np.ascontiguousarray(xtr)))
    x_test = normalize_per_input(torch.from_numpy(np.ascontiguousarray(xte)))
    y_train, y_test = torch.from_numpy(ytr), torch.from_numpy(yte)
    if (idx := _subset(len(y_train), train_size, gen)) is not None:
        x_train, y_train = x_train[idx], y_train[idx]
    if (idx := _subset(len(y_test), test_size, gen)) is not None:
        x_test, y_test = x_test[idx], y_test[idx]
    if random_labels:
        y_train = torch.randint(0, info.num_classes, y_train.shape, generator=gen)
    data = Data(
        x_train.contiguous().to(device), y_train.to(device),
        x_test.contiguous().to(device), y_test.to(device), info,
    )
    _CACHE.clear()  # keep one data set per process: a worker serves one sweep at a time
    _CACHE[key] = data
    return data
