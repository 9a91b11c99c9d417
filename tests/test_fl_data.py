"""Tests of fl.data: the embedded MNIST subset, the loaders on ../shared/data (skipped with a
reason when it is absent; CI always has it), format checks on small crafted files, data
directory resolution and its error messages, and the seeded synthetic generators."""

from __future__ import annotations

import doctest
import gzip
import hashlib
import io
import json
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fl.data as data
from fl.data import (DATASETS, ENV_DATA_DIR, MNIST_FILES, DatasetFormatError,
                     DatasetNotFoundError, load_dataset, read_idx, resolve_data_dir)
from sparsecodec.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "fl" / "_embedded"
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def shared_data_dir(*needed: str) -> Path:
    root, _ = resolve_data_dir()
    if root is None or not all((root / f).is_file() for f in needed):
        pytest.skip("../shared/data not found: set FL_DATA_DIR to a directory holding "
                    f"{', '.join(needed)} (see ../shared/data/README.md)")
    return root


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("mnist-embedded")


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", shared_data_dir(*MNIST_FILES))


# --------------------------------------------------------------------------- embedded subset

def test_embedded_layout(embedded):
    assert embedded.x_train.shape == (10_000, 1, 28, 28) and embedded.x_test.shape == (2_000, 1, 28, 28)
    assert embedded.x_train.dtype == np.float32 and embedded.y_train.dtype == np.int64
    assert embedded.x_train.min() == 0.0 and embedded.x_train.max() == 1.0
    assert embedded.num_classes == 10 and embedded.task == "classification"
    assert embedded.input_shape == (1, 28, 28) and embedded.num_features == 784
    # the class counts ATTRIBUTION.md documents
    assert np.bincount(embedded.y_train).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert np.bincount(embedded.y_test).tolist() == [189, 222, 212, 242, 196, 186, 158, 215, 193, 187]
    assert np.array_equal(embedded.extras["train_index"], np.arange(10_000))
    assert np.array_equal(embedded.extras["test_index"], np.arange(0, 10_000, 5))


def test_embedded_file_matches_attribution():
    npz = EMBEDDED / "mnist_subset.npz"
    text = (EMBEDDED / "ATTRIBUTION.md").read_text()
    recorded = re.search(r"sha256\(mnist_subset\.npz\) = ([0-9a-f]{64})", text).group(1)
    assert hashlib.sha256(npz.read_bytes()).hexdigest() == recorded
    assert npz.stat().st_size <= 3_000_000
    assert "CC BY-SA 3.0" in text and "creativecommons.org/licenses/by-sa/3.0" in (EMBEDDED / "LICENSE.txt").read_text()
    # fl runs from the checkout (not installed, issue 17): the file is tracked there
    assert "fl/_embedded/mnist_subset.npz" in subprocess.run(
        ["git", "ls-files", "fl/_embedded"], cwd=REPO, capture_output=True, text=True).stdout


def test_embedded_needs_no_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "nowhere"))
    assert load_dataset("mnist-embedded", data_dir=tmp_path / "nowhere").x_test.shape[0] == 2_000


def test_embedded_equals_official_rows(embedded, mnist):
    assert np.array_equal(embedded.x_train, mnist.x_train[:10_000])
    assert np.array_equal(embedded.y_train, mnist.y_train[:10_000])
    assert np.array_equal(embedded.x_test, mnist.x_test[::5])
    assert np.array_equal(embedded.y_test, mnist.y_test[::5])


def test_pixel_scales(embedded):
    sym = load_dataset("mnist-embedded", scale="symmetric")
    assert sym.x_train.min() == -1.0 and sym.x_train.max() == 1.0
    expected = (embedded.x_train - np.float32(0.5)) / np.float32(0.5)   # Normalize(0.5, 0.5)
    assert np.array_equal(sym.x_train, expected)
    assert np.array_equal(np.rint(embedded.x_train * 255), np.rint((sym.x_train + 1) * 127.5))
    with pytest.raises(ConfigError, match="scale"):
        load_dataset("mnist-embedded", scale="imagenet")


# --------------------------------------------------------------------------- shared data loaders

def test_mnist(mnist):
    assert mnist.x_train.shape == (60_000, 1, 28, 28) and mnist.x_test.shape == (10_000, 1, 28, 28)
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_CLASS_COUNTS
    assert mnist.y_test.shape == (10_000,) and mnist.y_test.dtype == np.int64
    assert 0.0 <= mnist.x_train.min() and mnist.x_train.max() <= 1.0


def test_femnist_writers_and_polarity():
    root = shared_data_dir(data.FEMNIST_FILE)
    ds = load_dataset("femnist", root)
    assert ds.x_train.shape == (28_239, 1, 28, 28) and ds.x_test.shape == (3_246, 1, 28, 28)
    assert ds.num_classes == 62 and ds.y_train.max() <= 61
    assert len(ds.writer_names) == 207
    assert set(np.unique(ds.writer_train)) == set(np.unique(ds.writer_test)) == set(range(207))
    assert ds.writer_train.shape == (28_239,) and ds.writer_train.dtype == np.int64
    # after 255 - x the background is 0 (ink bright), as in MNIST: corners are dark
    assert np.median(ds.x_train[:, 0, 0, 0]) == 0.0 and ds.x_train.mean() < 0.2
    raw = load_dataset("femnist", root, invert=False)
    assert np.array_equal(np.rint(raw.x_train * 255), 255 - np.rint(ds.x_train * 255))


def test_blogfeedback_real_file():
    ds = load_dataset("blogfeedback", shared_data_dir(data.BLOG_FILE))
    assert ds.x_train.shape == (52_397, 280) and ds.x_test.shape == (7_624, 280)
    assert ds.num_classes is None and ds.task == "regression" and ds.y_train.dtype == np.float32
    assert ds.y_train.min() == 0 and ds.y_train.max() == 1424
    assert abs(ds.y_train.mean() - 6.76) < 0.01
    varying = ds.extras["feature_std"] != 1.0
    assert np.allclose(ds.x_train[:, varying].mean(0), 0, atol=1e-4)
    assert np.allclose(ds.x_train[:, varying].std(0), 1, atol=1e-3)


# --------------------------------------------------------------------------- crafted files

def write_blog_zip(root: Path, train_rows: np.ndarray, test_rows: np.ndarray, n_test_files=60):
    def csv(rows):
        return "\n".join(",".join(f"{v:g}" for v in row) for row in rows).encode() + b"\n"
    (root / "blogfeedback").mkdir(parents=True)
    with zipfile.ZipFile(root / data.BLOG_FILE, "w") as zf:
        zf.writestr("blogData_train.csv", csv(train_rows))
        zf.writestr("New Folder/", b"")
        for i in range(n_test_files):   # the real archive: 60 files, one per day; row i in file i
            zf.writestr(f"blogData_test-2012.03.{i:02d}.00_00.csv", csv(test_rows[i: i + 1]))


def test_blogfeedback_standardisation_and_target(tmp_path):
    rng = np.random.default_rng(0)
    train = np.rint(rng.uniform(0, 50, (7, 281)))
    train[:, 5] = 3.0                       # a constant column: must stay finite
    test = np.rint(rng.uniform(0, 50, (60, 281)))
    write_blog_zip(tmp_path, train, test)
    ds = load_dataset("blogfeedback", tmp_path)
    mean, std = train[:, :280].mean(0), train[:, :280].std(0)
    std[5] = 1.0
    np.testing.assert_allclose(ds.x_train, ((train[:, :280] - mean) / std).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, ((test[:, :280] - mean) / std).astype(np.float32), rtol=1e-6, atol=1e-6)
    assert np.all(ds.x_train[:, 5] == 0) and np.array_equal(ds.y_test, test[:, 280].astype(np.float32))
    logged = load_dataset("blogfeedback", tmp_path, standardize=False, target="log1p")
    assert np.array_equal(logged.x_train, train[:, :280].astype(np.float32))
    np.testing.assert_allclose(logged.y_train, np.log1p(train[:, 280]), rtol=1e-6)
    with pytest.raises(ConfigError, match="target"):
        load_dataset("blogfeedback", tmp_path, target="sqrt")


def test_blogfeedback_format_errors(tmp_path):
    rows = np.ones((60, 281))
    write_blog_zip(tmp_path / "a", rows, rows, n_test_files=59)
    with pytest.raises(DatasetFormatError, match="59 test files"):
        load_dataset("blogfeedback", tmp_path / "a")
    write_blog_zip(tmp_path / "b", np.ones((3, 279)), rows)
    with pytest.raises(DatasetFormatError, match="279 columns"):
        load_dataset("blogfeedback", tmp_path / "b")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_roundtrip_and_errors(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(good), array)
    cases = {"truncated": idx_bytes(array)[:-1], "extra": idx_bytes(array) + b"\0",
             "float": bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big") + bytes(16),
             "short": b"\0\0\x08"}
    for name, payload in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(gzip.compress(payload))
        with pytest.raises(DatasetFormatError):
            read_idx(path)


def test_mnist_loader_checks_shapes(tmp_path):
    (tmp_path / "mnist").mkdir()
    images, labels = np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 2], np.uint8)
    for f in MNIST_FILES:
        content = idx_bytes(images if "images" in f else labels)
        (tmp_path / f).write_bytes(gzip.compress(content))
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.y_test.tolist() == [0, 1, 2]
    (tmp_path / MNIST_FILES[1]).write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 12], np.uint8))))
    with pytest.raises(DatasetFormatError, match="label 12"):
        load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------- data directory

def test_missing_dataset_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", tmp_path)
    message = str(err.value)
    for needle in (str(tmp_path), "mnist/train-images-idx3-ubyte.gz", "--data-dir", ENV_DATA_DIR,
                   "mnist-embedded"):
        assert needle in message
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=f"environment variable {ENV_DATA_DIR}"):
        load_dataset("femnist")
    monkeypatch.delenv(ENV_DATA_DIR)
    monkeypatch.setattr(data, "default_data_dir", lambda: None)
    with pytest.raises(DatasetNotFoundError, match="no data directory was given"):
        load_dataset("blogfeedback")


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg")[0] == tmp_path / "arg"
    assert resolve_data_dir()[0] == tmp_path / "env"
    monkeypatch.delenv(ENV_DATA_DIR)
    assert resolve_data_dir()[0] == data.default_data_dir()


def test_unknown_names_and_options_list_valid_ones():
    with pytest.raises(ConfigError, match="valid datasets: blogfeedback, cifar10, cifar100, femnist, "
                       "mnist, mnist-embedded"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match=r"valid options: scale='unit'"):
        load_dataset("mnist-embedded", normalise=True)


# --------------------------------------------------------------------------- synthetic sets

def test_synthetic_linear_ground_truth():
    ds = load_dataset("synthetic-linear", n_train=3000, n_test=200, dim=50, n_informative=5, noise=0.0)
    w, b = ds.extras["w_true"], float(ds.extras["b_true"])
    assert np.flatnonzero(w).tolist() == ds.extras["support"].tolist() and len(ds.extras["support"]) == 5
    np.testing.assert_allclose(ds.y_train, ds.x_train.astype(np.float64) @ w + b, rtol=1e-6, atol=1e-6)
    noisy = load_dataset("synthetic-linear", n_train=3000, n_test=200, dim=50, n_informative=5, noise=0.5)
    residual = noisy.y_train - (noisy.x_train.astype(np.float64) @ w + b)
    assert abs(residual.std() / 0.5 - 1) < 0.05     # sd of the sample std: 0.5 / sqrt(6000)
    assert ds.num_classes is None and ds.y_train.dtype == np.float32


def test_synthetic_groups_are_heterogeneous():
    def group_mean_spread(heterogeneity):
        ds = load_dataset("synthetic-linear", n_train=2000, dim=20, n_informative=2, n_groups=10,
                          heterogeneity=heterogeneity)
        assert np.array_equal(ds.writer_train, np.repeat(np.arange(10), 200))
        means = np.stack([ds.x_train[ds.writer_train == g].mean(0) for g in range(10)])
        return means.std(0).mean()
    assert group_mean_spread(0.0) < 0.15 < 1.0 < group_mean_spread(2.0)   # noise sd 1/sqrt(200)


def test_synthetic_logistic_labels():
    ds = load_dataset("synthetic-logistic", n_train=1000, dim=20, num_classes=5)
    logits = ds.x_train.astype(np.float64) @ ds.extras["w_true"].T + ds.extras["b_true"]
    assert np.array_equal(ds.y_train, logits.argmax(1)) and ds.y_train.dtype == np.int64
    sampled = load_dataset("synthetic-logistic", n_train=1000, dim=20, num_classes=5, labels="sample")
    agreement = (sampled.y_train == logits.argmax(1)).mean()
    assert 0.2 < agreement < 1.0


def test_synthetic_determinism_and_validation():
    a = load_dataset("synthetic-logistic", seed=4)
    b = load_dataset("synthetic-logistic", seed=4)
    c = load_dataset("synthetic-logistic", seed=5)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    for bad in ({"n_train": 0}, {"dim": 2.5}, {"labels": "soft"}):
        with pytest.raises(ConfigError):
            load_dataset("synthetic-logistic", **bad)
    with pytest.raises(ConfigError, match="n_informative"):
        load_dataset("synthetic-linear", dim=4, n_informative=5)


def test_options_are_json_safe(embedded):
    for ds in (embedded, load_dataset("synthetic-linear", n_train=10, n_test=10, dim=3, n_informative=1)):
        assert json.loads(json.dumps(ds.options)) == ds.options
    assert set(DATASETS) == {"mnist", "mnist-embedded", "femnist", "blogfeedback", "cifar10",
                             "cifar100", "synthetic-linear", "synthetic-logistic"}
    assert "mnist-embedded" in repr(embedded) and "10000" in repr(embedded)


def test_doctests():
    assert doctest.testmod(data, raise_on_error=False).failed == 0
