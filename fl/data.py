"""Datasets for the FL layer: numpy arrays in memory, cheap to partition; torch comes later.

Every loader returns a :class:`Dataset` with this layout (the engine builds tensors from it):

* images (MNIST, FEMNIST): ``x_*`` float32 of shape ``(N, 1, 28, 28)`` (NCHW, ready for a
  conv net; the FC / logistic models flatten it themselves), ``y_*`` int64 class ids;
  CIFAR-10/100: ``(N, 3, 32, 32)`` float32 RGB, NCHW;
* tabular (BlogFeedback, synthetic): ``x_*`` float32 ``(N, num_features)``; ``y_*`` int64
  (classification) or float32 (regression, ``num_classes is None``).

Pixel scaling (option ``scale``) follows the papers: ``"unit"`` = ``uint8 / 255`` in [0, 1]
with no normalisation (FLARE); ``"symmetric"`` = ``ToTensor`` then ``Normalize(0.5, 0.5)``,
i.e. ``(uint8 / 255 - 0.5) / 0.5`` in [-1, 1] (FedPM, SparsyFed), computed in float32 like
torchvision does.

Files are looked up in a data directory: the ``data_dir`` argument (CLI ``--data-dir``),
else the environment variable ``FL_DATA_DIR``, else ``../shared/data`` next to the
repository when it exists. Nothing is ever downloaded. ``mnist-embedded`` (10,000 train and
2,000 test MNIST images shipped in ``fl/_embedded``) needs no data directory.

    >>> ds = load_dataset("mnist-embedded")
    >>> ds.x_train.shape, ds.x_train.dtype, ds.y_train.dtype, ds.num_classes
    ((10000, 1, 28, 28), dtype('float32'), dtype('int64'), 10)
    >>> sorted(DATASETS)
    ['blogfeedback', 'cifar10', 'cifar100', 'femnist', 'mnist', 'mnist-embedded', 'synthetic-linear', 'synthetic-logistic']
"""

from __future__ import annotations

import gzip
import inspect
import io
import os
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sparsecodec.errors import ConfigError

__all__ = ["Dataset", "DatasetSpec", "DATASETS", "load_dataset", "resolve_data_dir",
           "default_data_dir", "read_idx", "DatasetNotFoundError", "DatasetFormatError",
           "ENV_DATA_DIR", "PIXEL_SCALES", "read_cifar_pickle", "CIFAR10_FILES", "CIFAR100_FILES"]

ENV_DATA_DIR = "FL_DATA_DIR"
PIXEL_SCALES = ("unit", "symmetric")
MNIST_FILES = ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz",
               "mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")
FEMNIST_FILE = "femnist/femnist_leaf_subset.npz"
BLOG_FILE = "blogfeedback/BlogFeedback.zip"
EMBEDDED_MNIST = "mnist_subset.npz"   # inside the package folder fl/_embedded/
CIFAR10_FILES = tuple(f"cifar-10-batches-py/{n}" for n in (
    "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
    "test_batch", "batches.meta"))
CIFAR100_FILES = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the data directory says; the message says where to put them."""


class DatasetFormatError(ValueError):
    """A dataset file exists but does not have the documented format (truncated, wrong shape)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test arrays of one dataset (treat the arrays as read-only: clients share them).

    ``writer_train`` / ``writer_test`` hold a per-sample group id (int64) where the data has a
    natural partition: the FEMNIST writer (an index into ``writer_names``), or the generating
    group of a synthetic set. ``options`` is the JSON-safe resolved loader configuration;
    ``extras`` holds arrays that are not data (standardisation statistics, a synthetic
    ground truth, the source indices of the embedded subset).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None
    writer_train: np.ndarray | None = None
    writer_test: np.ndarray | None = None
    writer_names: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"`` (``num_classes is None``)."""
        return "regression" if self.num_classes is None else "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)`` or ``(280,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        """Number of input values per sample (784 for 28x28 images)."""
        return int(np.prod(self.input_shape))

    def __repr__(self) -> str:  # the default dataclass repr would print whole arrays
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"num_classes={self.num_classes}, writers="
                f"{None if self.writer_train is None else len(np.unique(self.writer_train))})")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, a one-line description and the files it needs."""

    name: str
    loader: Callable[..., Dataset]
    description: str
    files: tuple[str, ...] = ()   # relative to the data directory; () = needs none

    def option_defaults(self) -> dict[str, Any]:
        """The loader's keyword options and their defaults."""
        return {p.name: p.default for p in inspect.signature(self.loader).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}


DATASETS: dict[str, DatasetSpec] = {}


def _register(name: str, description: str, files: tuple[str, ...] = ()):
    def decorate(loader):
        DATASETS[name] = DatasetSpec(name, loader, description, files)
        return loader
    return decorate


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **opts: Any) -> Dataset:
    """Load dataset ``name`` (a key of :data:`DATASETS`) with loader options ``opts``.

    Unknown names or options raise :class:`~sparsecodec.errors.ConfigError` listing the valid
    ones; missing files raise :class:`DatasetNotFoundError` saying where to put them.

    >>> load_dataset("synthetic-linear", n_train=100, n_test=20, dim=8, n_informative=2).x_train.shape
    (100, 8)
    >>> load_dataset("imagenet")
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: unknown dataset 'imagenet'; valid datasets: blogfeedback, cifar10, cifar100, femnist, mnist, mnist-embedded, synthetic-linear, synthetic-logistic
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise ConfigError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    valid = spec.option_defaults()
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for dataset {name!r}; valid options: "
                          + ", ".join(f"{k}={v!r}" for k, v in valid.items()))
    root = _locate(spec, data_dir) if spec.files else None
    return spec.loader(root, **opts)


def default_data_dir() -> Path | None:
    """``<repo>/../shared/data`` when this checkout has one beside it (as CI does), else None."""
    candidate = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The data directory to use and where that choice came from (for error messages).

    >>> resolve_data_dir("/tmp")
    (PosixPath('/tmp'), 'the data_dir argument / --data-dir')
    """
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument / --data-dir"
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser(), f"the environment variable {ENV_DATA_DIR}"
    return default_data_dir(), "the default ../shared/data beside the repository"


def _locate(spec: DatasetSpec, data_dir) -> Path:
    root, origin = resolve_data_dir(data_dir)
    missing = spec.files if root is None else [f for f in spec.files if not (root / f).is_file()]
    if missing:
        where = ("no data directory was given and ../shared/data does not exist" if root is None
                 else f"looked in {root} (from {origin}); missing: {', '.join(missing)}")
        raise DatasetNotFoundError(
            f"dataset {spec.name!r} needs the files {', '.join(spec.files)} under a data "
            f"directory; {where}. Put them at DIR/<path> and pass --data-dir DIR (CLI), "
            f"data_dir=DIR (Python) or set {ENV_DATA_DIR}=DIR. Nothing is downloaded; the "
            f"built-in 'mnist-embedded' needs no files.")
    return root


def _scale_pixels(pixels: np.ndarray, scale: str) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] ("unit") or [-1, 1] ("symmetric")."""
    if scale not in PIXEL_SCALES:
        raise ConfigError(f"scale must be one of {PIXEL_SCALES}, got {scale!r}")
    x = pixels.astype(np.float32) / np.float32(255.0)
    if scale == "symmetric":   # torchvision Normalize(0.5, 0.5): sub_(0.5).div_(0.5) in float32
        x = (x - np.float32(0.5)) / np.float32(0.5)
    return x


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes (the MNIST format) into a uint8 array.

    The header (magic ``00 00 08 ndim``, then ``ndim`` big-endian uint32 sizes) is checked
    against the payload length, so a truncated or foreign file raises DatasetFormatError.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DatasetFormatError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims, dtype=np.int64)):
        raise DatasetFormatError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but "
                                 f"the payload has {len(raw) - header} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _check_images(images, labels, what, num_classes=10):
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise DatasetFormatError(f"{what}: expected (N, 28, 28) images and N labels, got "
                                 f"{images.shape} and {labels.shape}")
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetFormatError(f"{what}: label {int(labels.max())} >= {num_classes}")


def _image_dataset(name, x_train, y_train, x_test, y_test, scale, **kw) -> Dataset:
    return Dataset(name=name,
                   x_train=_scale_pixels(x_train, scale).reshape(-1, 1, 28, 28),
                   y_train=y_train.astype(np.int64),
                   x_test=_scale_pixels(x_test, scale).reshape(-1, 1, 28, 28),
                   y_test=y_test.astype(np.int64), **kw)


@_register("mnist", "MNIST, 60,000 train / 10,000 test, 28x28 grey digits (IDX .gz files)",
           MNIST_FILES)
def _load_mnist(root: Path, *, scale: str = "unit") -> Dataset:
    x_train, y_train, x_test, y_test = (read_idx(root / f) for f in MNIST_FILES)
    _check_images(x_train, y_train, "MNIST train")
    _check_images(x_test, y_test, "MNIST test")
    return _image_dataset("mnist", x_train, y_train, x_test, y_test, scale, num_classes=10,
                          options={"scale": scale, "source": str(root / "mnist")})


@_register("mnist-embedded", "MNIST subset shipped in the package: the first 10,000 training "
           "images (official order) and every 5th test image (2,000)")
def _load_mnist_embedded(root: None, *, scale: str = "unit") -> Dataset:
    ref = resources.files(__package__).joinpath("_embedded", EMBEDDED_MNIST)
    if not ref.is_file():
        raise DatasetNotFoundError(f"the embedded MNIST subset {ref} is missing: the package was "
                                   "installed without its data (package-data fl/_embedded/*)")
    with ref.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    _check_images(arrays["x_train"], arrays["y_train"], "embedded MNIST train")
    _check_images(arrays["x_test"], arrays["y_test"], "embedded MNIST test")
    return _image_dataset(
        "mnist-embedded", arrays["x_train"], arrays["y_train"], arrays["x_test"],
        arrays["y_test"], scale, num_classes=10,
        options={"scale": scale, "source": f"fl/_embedded/{EMBEDDED_MNIST}"},
        extras={"train_index": arrays["train_index"].astype(np.int64),
                "test_index": arrays["test_index"].astype(np.int64)})


@_register("femnist", "FEMNIST (LEAF 5% non-IID sample): 207 writers, 62 classes, "
           "28,239 train / 3,246 test", (FEMNIST_FILE,))
def _load_femnist(root: Path, *, scale: str = "unit", invert: bool = True) -> Dataset:
    """LEAF stores 255 = white background, ink dark; ``invert=True`` (default) uses
    ``255 - x`` so that ink is bright on a 0 background, like MNIST."""
    with np.load(root / FEMNIST_FILE, allow_pickle=False) as npz:
        try:
            x, y, user, split, user_ids = (npz[k] for k in ("x", "y", "user", "split", "user_ids"))
        except KeyError as exc:
            raise DatasetFormatError(f"{root / FEMNIST_FILE}: missing array {exc}") from None
    n = len(x)
    if (x.dtype != np.uint8 or x.shape != (n, 784) or y.shape != (n,) or user.shape != (n,)
            or split.shape != (n,)):
        raise DatasetFormatError(f"{root / FEMNIST_FILE}: unexpected shapes/dtypes "
                                 f"x {x.shape} {x.dtype}, y {y.shape}, user {user.shape}")
    if n and (int(user.min()) < 0 or int(user.max()) >= len(user_ids) or int(y.max()) >= 62):
        raise DatasetFormatError(f"{root / FEMNIST_FILE}: writer or label index out of range")
    if invert:
        x = 255 - x
    train, test = split == 0, split == 1
    images = x.reshape(n, 28, 28)
    return _image_dataset(
        "femnist", images[train], y[train], images[test], y[test], scale, num_classes=62,
        writer_train=user[train].astype(np.int64), writer_test=user[test].astype(np.int64),
        writer_names=tuple(str(u) for u in user_ids),
        options={"scale": scale, "invert": invert, "source": str(root / FEMNIST_FILE)})


# -- CIFAR: the official python-pickle batches, read by fl.cifar_pickle (no code runs) -------
from .cifar_pickle import read_cifar_pickle  # noqa: E402 - it imports DatasetFormatError from here


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_pickle(path)
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: b'data' must be a uint8 (N, 3072) array, got "
                                 f"{getattr(data, 'shape', type(data).__name__)} "
                                 f"{getattr(data, 'dtype', '')}")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
            type(v) is int and 0 <= v < num_classes for v in labels):
        raise DatasetFormatError(f"{path}: {label_key!r} must be a list of {len(data)} ints in "
                                 f"[0, {num_classes})")
    return data, np.asarray(labels, dtype=np.int64)


def _cifar_meta(path: Path, key: bytes, num_classes: int) -> None:
    names = read_cifar_pickle(path).get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DatasetFormatError(f"{path}: {key!r} must list {num_classes} class names")


def _cifar_dataset(name, root, train, test, label_key, num_classes, scale) -> Dataset:
    parts = [_cifar_batch(root / f, label_key, num_classes) for f in (*train, test)]
    x_train = np.concatenate([x for x, _ in parts[:-1]])
    y_train = np.concatenate([y for _, y in parts[:-1]])
    # rows are the 1024 red, 1024 green, then 1024 blue pixels, each 32x32 row-major: NCHW
    return Dataset(name, _scale_pixels(x_train, scale).reshape(-1, 3, 32, 32), y_train,
                   _scale_pixels(parts[-1][0], scale).reshape(-1, 3, 32, 32), parts[-1][1],
                   num_classes=num_classes,
                   options={"scale": scale, "source": str(root / Path(test).parent)})


@_register("cifar10", "CIFAR-10, 50,000 train / 10,000 test, 32x32 RGB, 10 classes "
           "(python-pickle batches)", CIFAR10_FILES)
def _load_cifar10(root: Path, *, scale: str = "unit") -> Dataset:
    _cifar_meta(root / CIFAR10_FILES[-1], b"label_names", 10)
    return _cifar_dataset("cifar10", root, CIFAR10_FILES[:5], CIFAR10_FILES[5], b"labels", 10, scale)


@_register("cifar100", "CIFAR-100, 50,000 train / 10,000 test, 32x32 RGB, 100 fine classes "
           "(python-pickle files)", CIFAR100_FILES)
def _load_cifar100(root: Path, *, scale: str = "unit") -> Dataset:
    _cifar_meta(root / CIFAR100_FILES[2], b"fine_label_names", 100)
    return _cifar_dataset("cifar100", root, CIFAR100_FILES[:1], CIFAR100_FILES[1],
                          b"fine_labels", 100, scale)


BLOG_FEATURES = 280


def _read_blog_csv(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    table = np.loadtxt(io.BytesIO(zf.read(member)), delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != BLOG_FEATURES + 1:
        raise DatasetFormatError(f"BlogFeedback {member}: {table.shape[1]} columns, expected 281")
    return table


@_register("blogfeedback", "UCI BlogFeedback regression: 280 features, target = comments in "
           "the next 24 h; 52,397 train rows, 7,624 test rows (60 files)", (BLOG_FILE,))
def _load_blogfeedback(root: Path, *, standardize: bool = True, target: str = "raw") -> Dataset:
    """Train = ``blogData_train.csv``; test = the 60 ``blogData_test-*.csv`` in name order.

    ``standardize=True`` z-scores every feature with the *training* mean and standard
    deviation (float64, then float32); a constant training column (std 0) is only centred
    (divided by 1), so it stays finite. ``target="log1p"`` regresses ``log(1 + comments)``
    instead of the raw count (0..1424, heavy-tailed).
    """
    if target not in ("raw", "log1p"):
        raise ConfigError(f"target must be 'raw' or 'log1p', got {target!r}")
    with zipfile.ZipFile(root / BLOG_FILE) as zf:
        names = zf.namelist()
        if "blogData_train.csv" not in names:
            raise DatasetFormatError(f"{root / BLOG_FILE}: no blogData_train.csv")
        test_names = sorted(n for n in names if n.startswith("blogData_test-") and n.endswith(".csv"))
        if len(test_names) != 60:
            raise DatasetFormatError(f"{root / BLOG_FILE}: {len(test_names)} test files, expected 60")
        train = _read_blog_csv(zf, "blogData_train.csv")
        test = np.concatenate([_read_blog_csv(zf, n) for n in test_names])
    x_train, x_test = train[:, :BLOG_FEATURES], test[:, :BLOG_FEATURES]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    if standardize:
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = train[:, BLOG_FEATURES], test[:, BLOG_FEATURES]
    if target == "log1p":
        y_train, y_test = np.log1p(y_train), np.log1p(y_test)
    return Dataset("blogfeedback", x_train.astype(np.float32), y_train.astype(np.float32),
                   x_test.astype(np.float32), y_test.astype(np.float32), num_classes=None,
                   options={"standardize": standardize, "target": target,
                            "source": str(root / BLOG_FILE)},
                   extras={"feature_mean": mean, "feature_std": std})


def _check_positive(**values):
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key} must be a positive int, got {value!r}")


def _grouped_features(rng, n_train, n_test, dim, n_groups, heterogeneity):
    """Features x = mu_g + N(0, I); group g's mean mu_g ~ N(0, heterogeneity^2 I).

    Groups are equal contiguous blocks of the train (and of the test) samples, so
    ``writer_*`` gives a natural, heterogeneous partition. The features are rounded to
    float32 *before* the targets are computed from them, so the stored ``x`` and the stored
    ground truth agree exactly.
    """
    means = heterogeneity * rng.standard_normal((n_groups, dim))
    out = []
    for n in (n_train, n_test):
        group = (np.arange(n, dtype=np.int64) * n_groups) // n
        x = (means[group] + rng.standard_normal((n, dim))).astype(np.float32)
        out.append((x.astype(np.float64), group))
    return out


@_register("synthetic-linear", "seeded sparse linear regression y = x.w + b + noise, samples "
           "in heterogeneous groups")
def _load_synthetic_linear(root: None, *, n_train: int = 2000, n_test: int = 500,
                           dim: int = 280, n_informative: int = 28, noise: float = 0.1,
                           n_groups: int = 10, heterogeneity: float = 1.0,
                           seed: int = 0) -> Dataset:
    """``w`` has ``n_informative`` non-zero N(0,1) entries at random positions (the support
    is ``extras["support"]``), ``b ~ N(0,1)``, noise ~ N(0, noise^2)."""
    _check_positive(n_train=n_train, n_test=n_test, dim=dim, n_groups=n_groups)
    if not 0 <= n_informative <= dim:
        raise ConfigError(f"n_informative must be in [0, dim={dim}], got {n_informative}")
    rng = np.random.default_rng(seed)
    support = np.sort(rng.choice(dim, size=n_informative, replace=False))
    w = np.zeros(dim)
    w[support] = rng.standard_normal(n_informative)
    b = float(rng.standard_normal())
    (x_tr, g_tr), (x_te, g_te) = _grouped_features(rng, n_train, n_test, dim, n_groups, heterogeneity)
    y_tr = x_tr @ w + b + noise * rng.standard_normal(n_train)
    y_te = x_te @ w + b + noise * rng.standard_normal(n_test)
    opts = dict(n_train=n_train, n_test=n_test, dim=dim, n_informative=n_informative,
                noise=noise, n_groups=n_groups, heterogeneity=heterogeneity, seed=seed)
    return Dataset("synthetic-linear", x_tr.astype(np.float32), y_tr.astype(np.float32),
                   x_te.astype(np.float32), y_te.astype(np.float32), num_classes=None,
                   writer_train=g_tr, writer_test=g_te, options=opts,
                   extras={"w_true": w, "b_true": np.array(b), "support": support})


@_register("synthetic-logistic", "seeded multinomial logistic data (LEAF-style synthetic), "
           "samples in heterogeneous groups")
def _load_synthetic_logistic(root: None, *, n_train: int = 2000, n_test: int = 500,
                             dim: int = 60, num_classes: int = 10, n_groups: int = 10,
                             heterogeneity: float = 1.0, labels: str = "argmax",
                             seed: int = 0) -> Dataset:
    """Logits ``x W^T + b`` with ``W ~ N(0, 1/dim)``, ``b ~ N(0, 1)``. ``labels="argmax"``
    takes the most likely class (as LEAF's synthetic generator does); ``"sample"`` draws
    the label from the softmax (a true logistic model, with label noise)."""
    _check_positive(n_train=n_train, n_test=n_test, dim=dim, num_classes=num_classes,
                    n_groups=n_groups)
    if labels not in ("argmax", "sample"):
        raise ConfigError(f"labels must be 'argmax' or 'sample', got {labels!r}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((num_classes, dim)) / np.sqrt(dim)
    b = rng.standard_normal(num_classes)
    (x_tr, g_tr), (x_te, g_te) = _grouped_features(rng, n_train, n_test, dim, n_groups, heterogeneity)

    def draw(x):
        logits = x @ w.T + b
        if labels == "sample":   # Gumbel-max: argmax(logits + Gumbel) ~ softmax(logits)
            logits = logits + rng.gumbel(size=logits.shape)
        return logits.argmax(axis=1).astype(np.int64)

    opts = dict(n_train=n_train, n_test=n_test, dim=dim, num_classes=num_classes,
                n_groups=n_groups, heterogeneity=heterogeneity, labels=labels, seed=seed)
    return Dataset("synthetic-logistic", x_tr.astype(np.float32), draw(x_tr),
                   x_te.astype(np.float32), draw(x_te), num_classes=num_classes,
                   writer_train=g_tr, writer_test=g_te, options=opts,
                   extras={"w_true": w, "b_true": b})
