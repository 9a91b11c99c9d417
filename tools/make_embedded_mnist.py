"""Build fl/_embedded/mnist_subset.npz, the MNIST subset shipped inside the package.

Run once by hand (never by the tests):

    .venv/bin/python tools/make_embedded_mnist.py [--data-dir ../shared/data]

Content: the first 10,000 training images with their labels (the first 22,699 images of the
shared train file are byte-identical to the official file, in official order, so this part
is exactly official MNIST), and every 5th test image (indices 0, 5, ..., 9995: 2,000 images).
The test subset is strided rather than the first 2,000 because the official test file puts
its 5,000 cleaner (Census-employee) digits first; a stride keeps both writer populations.

The zip is written deterministically (fixed timestamps, fixed order, deflate level 9), so the
same input gives the same sha256, which ATTRIBUTION.md records and the tests check.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fl.data import MNIST_FILES, read_idx, resolve_data_dir  # noqa: E402

N_TRAIN = 10_000
TEST_STRIDE = 5


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip metadata so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(REPO / "fl" / "_embedded" / "mnist_subset.npz"))
    args = parser.parse_args()
    root, origin = resolve_data_dir(args.data_dir)
    if root is None:
        sys.exit("no data directory: pass --data-dir or set FL_DATA_DIR")
    x_train, y_train, x_test, y_test = (read_idx(root / f) for f in MNIST_FILES)
    train_index = np.arange(N_TRAIN, dtype=np.uint16)
    test_index = np.arange(0, len(x_test), TEST_STRIDE, dtype=np.uint16)
    arrays = {"x_train": x_train[train_index], "y_train": y_train[train_index],
              "x_test": x_test[test_index], "y_test": y_test[test_index],
              "train_index": train_index, "test_index": test_index}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz_deterministic(out, arrays)
    print(f"source: {root} ({origin})")
    for f in MNIST_FILES:
        print(f"  sha256 {hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}")
    print(f"wrote {out}: {out.stat().st_size} bytes, "
          f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")
    for key in ("y_train", "y_test"):
        print(f"  {key} class counts: {np.bincount(arrays[key], minlength=10).tolist()}")


if __name__ == "__main__":
    main()
