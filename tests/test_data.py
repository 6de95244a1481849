import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from workers import data as D


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    """The IDX format written the plain way: magic (0, 0, 0x08, ndim), big-endian dims, bytes."""
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_idx_dataset(d: Path, n_train=30, n_test=12, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        write_idx(d / name, arr, compress)
    return arrays


def make_cifar(root: Path, name: str, per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        d = root / "cifar-100-python"
        files, key = ["train", "test"], b"fine_labels"
    d.mkdir(parents=True)
    out = {}
    for f in files:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10 if name == "cifar10" else 100, per_batch).tolist()
        with open(d / f, "wb") as fh:
            pickle.dump({key: y, b"data": x}, fh)
        out[f] = (x, y)
    return out


@pytest.fixture(autouse=True)
def _clear_cache():
    D._CACHE.clear()
    yield
    D._CACHE.clear()


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x-idx3-ubyte", arr, compress)
    p = tmp_path / ("x-idx3-ubyte.gz" if compress else "x-idx3-ubyte")
    np.testing.assert_array_equal(D.read_idx(p), arr)


def test_read_idx_rejects_truncated(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 5, 5)), compress=False)
    p = tmp_path / "x"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(D.DataError, match="IDX header"):
        D.read_idx(p)


@pytest.mark.parametrize("name,layout", [("fashion_mnist", ""), ("mnist", "MNIST/raw")])
def test_idx_datasets(tmp_path, name, layout):
    arrays = make_idx_dataset(tmp_path / layout if layout else tmp_path)
    data = D.load_data(name, root=str(tmp_path))
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(data.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    # normalized per input: mean 0, variance 1, i.e. on the sphere of radius sqrt(784)
    flat = data.x_train.reshape(30, -1).double()
    torch.testing.assert_close(flat.mean(1), torch.zeros(30, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.norm(dim=1), torch.full((30,), 28.0, dtype=torch.float64), rtol=1e-5, atol=0)
    # and it is the same image: a positive affine map of the raw pixels
    raw = arrays["train-images-idx3-ubyte"][3].astype(np.float64).ravel()
    want = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(flat[3].numpy(), want, atol=1e-5)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_centre_crop(tmp_path, name):
    batches = make_cifar(tmp_path, name)
    data = D.load_data(name, root=str(tmp_path))
    n_train = 30 if name == "cifar10" else 6
    assert data.x_train.shape == (n_train, 3, 24, 24) and data.x_test.shape == (6, 3, 24, 24)
    x, y = batches["test_batch" if name == "cifar10" else "test"]
    assert data.y_test.tolist() == y
    crop = x[2].reshape(3, 32, 32)[:, 4:28, 4:28].astype(np.float64).ravel()
    np.testing.assert_allclose(data.x_test[2].double().numpy().ravel(),
                               (crop - crop.mean()) / crop.std(), atol=1e-5)


def test_digits_split_subsets_and_random_labels():
    full = D.load_data("digits")
    assert len(full.y_train) == 1347 and len(full.y_test) == 450
    assert full.x_train.shape[1:] == (1, 8, 8)
    sub = D.load_data("digits", train_size=100, test_size=40, seed=0)
    assert len(sub.y_train) == 100 and len(sub.y_test) == 40
    again = D.load_data("digits", train_size=100, test_size=40, seed=0)
    assert torch.equal(sub.x_train, again.x_train)
    other = D.load_data("digits", train_size=100, test_size=40, seed=1)
    assert not torch.equal(sub.x_train, other.x_train)
    rl = D.load_data("digits", random_labels=True, seed=0)
    assert torch.equal(rl.x_train, full.x_train) and torch.equal(rl.y_test, full.y_test)
    agree = (rl.y_train == full.y_train).float().mean().item()
    assert agree < 0.2  # ~ 1/10 by chance
    assert sorted(rl.y_train.unique().tolist()) == list(range(10))


def test_augmentation_is_a_circular_shift_then_flip():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5)
    gen = torch.Generator().manual_seed(4)
    out = D.augment_batch(x, gen, max_shift=2)
    # replay the same random numbers and build each image the slow way with torch.roll
    g2 = torch.Generator().manual_seed(4)
    dy = torch.randint(-2, 3, (2,), generator=g2)
    dx = torch.randint(-2, 3, (2,), generator=g2)
    flip = torch.rand(2, generator=g2) < 0.5
    for i in range(2):
        want = torch.roll(x[i], shifts=(int(dy[i]), int(dx[i])), dims=(1, 2))
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)


def test_augmentation_covers_all_shifts_and_flips():
    x = torch.zeros(4000, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # a single bright pixel in the centre
    out = D.augment_batch(x, torch.Generator().manual_seed(0))
    pos = out.reshape(4000, -1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert set(rows.tolist()) == set(range(0, 9)) and set(cols.tolist()) == set(range(0, 9))
    asym = torch.zeros(2000, 1, 3, 3)
    asym[:, 0, 1, 0] = 1.0
    flipped = D.augment_batch(asym, torch.Generator().manual_seed(1), max_shift=0)
    frac = (flipped[:, 0, 1, 2] == 1).float().mean().item()
    assert 0.45 < frac < 0.55


def test_missing_dataset_names_root_and_remedy(tmp_path):
    with pytest.raises(D.DataError, match=f"{tmp_path}.*dataset-fashion-mnist"):
        D.check_available("fashion_mnist", str(tmp_path), download=False)
    with pytest.raises(D.DataError, match="dataset.download=true"):
        D.check_available("cifar10", str(tmp_path), download=False)
    with pytest.raises(D.DataError, match="allowed: digits"):
        D.load_data("svhn")


@pytest.mark.skipif(not Path(D.FASHION_MNIST_DEFAULT_ROOT).is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_the_debian_package():
    data = D.load_data("fashion_mnist", train_size=2000, test_size=500)
    assert data.x_train.shape == (2000, 1, 28, 28) and data.x_test.shape == (500, 1, 28, 28)
    assert sorted(data.y_train.unique().tolist()) == list(range(10))
    norms = data.x_train.reshape(2000, -1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 28.0), rtol=1e-4, atol=0)
