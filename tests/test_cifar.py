"""Tests of the CIFAR pieces of issue 19: the ``resnet18-cifar`` model (structure, BatchNorm
init and buffers, forward/backward, Powerprop conversion, what fl sends of it) and the
CIFAR-10/100 loaders (layout on a tiny synthetic directory in the official format, the
restricted unpickler refusing hostile files, the missing-directory message)."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl.algorithms.base import load_tensors, model_tensors
from fl.algorithms.sparsyfed import prunable_names
from fl.data import (CIFAR10_FILES, CIFAR100_FILES, DatasetFormatError, DatasetNotFoundError,
                     load_dataset, read_cifar_pickle)
from fl.models import build_model, count_parameters
from fl.powerprop import PowerpropConv2d, PowerpropLinear, powerprop_model, prunable_modules
from sparsecodec.errors import ConfigError

NARROW = 0.125   # 8-16-32-64 channels: the same graph as the paper's net, CPU-fast


def narrow(seed=0, **opts):
    return build_model("resnet18-cifar", seed=seed, width=NARROW, **opts)


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def count_layers(model, types):
    return sum(isinstance(m, types) for m in model.modules())


# --------------------------------------------------------------------------- the model
def test_resnet18_structure_at_the_paper_width():
    net = build_model("resnet18-cifar", device="meta")
    assert count_parameters(net) == 11_173_962
    assert count_layers(net, nn.Conv2d) == 1 + 8 * 2 + 3       # stem, 8 blocks, 3 projections
    assert count_layers(net, nn.BatchNorm2d) == 20 and count_layers(net, nn.Linear) == 1
    assert count_layers(net, nn.MaxPool2d) == 0
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert [s[0].conv1.out_channels for s in (net.layer1, net.layer2, net.layer3, net.layer4)] \
        == [64, 128, 256, 512]
    assert [s[0].conv1.stride for s in (net.layer1, net.layer2, net.layer3, net.layer4)] \
        == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert net.linear.in_features == 512 and net.linear.out_features == 10
    assert count_parameters(build_model("resnet18-cifar", device="meta", num_classes=100)) == 11_220_132


@pytest.mark.parametrize("init", [None, "zeros", "lecun_normal"])
def test_batchnorm_is_initialised_like_torch_whatever_the_scheme(init):
    net = build_model("resnet18-cifar", seed=0, width=NARROW, init=init)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            # to_empty left these as uninitialised memory: all of them must have been reset
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert int(m.num_batches_tracked) == 0


def test_forward_backward_and_batchnorm_buffers():
    net = narrow(num_classes=100)
    x, _ = batch()
    y = torch.tensor([3, 99])
    out = net(x)
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.conv1.weight.grad.abs().sum() > 0
    assert int(net.bn1.num_batches_tracked) == 1                  # the train-mode pass updated it
    assert not torch.equal(net.bn1.running_mean, torch.zeros_like(net.bn1.running_mean))
    net.eval()
    torch.testing.assert_close(net(x), net(x))                    # eval uses the running stats


def test_what_fl_sends_of_the_model():
    """model_tensors keeps the floating entries: parameters and BN running mean/var, not the
    integer num_batches_tracked; SparsyFed's prunable tensors are exactly the conv/linear
    weights (its own consistency check), so the 1-D BN tensors are never pruned."""
    net = narrow()
    tensors = model_tensors(net)
    assert "bn1.running_mean" in tensors and "layer4.1.bn2.running_var" in tensors
    assert not any(k.endswith("num_batches_tracked") for k in tensors)
    assert all(v.dtype == np.float32 for v in tensors.values())
    assert prunable_names(tensors) == [f"{m}.weight" for m in prunable_modules(net)]
    assert len(prunable_names(tensors)) == 21
    other = narrow(seed=1)
    load_tensors(other, tensors)
    other.eval(), net.eval()
    torch.testing.assert_close(other(batch()[0]), net(batch()[0]), rtol=0, atol=0)


def test_width_is_validated():
    for bad in (0, -1.0, float("nan"), "1", True):
        with pytest.raises(ConfigError, match="width"):
            build_model("resnet18-cifar", device="meta", width=bad)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet18-cifar", device="meta", num_classes=0)


def test_powerprop_converts_every_conv_and_linear():
    net = narrow()
    plain = count_layers(net, (nn.Conv2d, nn.Linear))
    pp = powerprop_model(net, alpha=1.25, prune_activations=True)
    assert count_layers(pp, (PowerpropConv2d, PowerpropLinear)) == plain == 21
    assert list(pp.state_dict()) == list(net.state_dict())       # same names: tensors move over
    # make every conv/linear half sparse so activation pruning really prunes (stride-2 and
    # 1x1 projection convs included), then train one step on a tiny batch
    with torch.no_grad():
        for m in prunable_modules(pp).values():
            m.weight.view(-1)[::2] = 0.0
    x, y = batch()
    out = pp(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for m in prunable_modules(pp).values():
        assert torch.isfinite(m.weight.grad).all()
        assert torch.all(m.weight.grad.view(-1)[::2] == 0)       # zero latent -> zero gradient
        assert m.saved_density_count == 1                        # activation pruning ran
    # the stem sees the dense image and the head an average of activations: both saved inputs
    # are cut to about the weights' density 1/2 (after a ReLU, ties at 0 keep the whole input)
    assert 0.4 < pp.conv1.last_saved_density < 0.6 and 0.4 < pp.linear.last_saved_density < 0.6


def test_powerprop_alpha_one_is_the_plain_model():
    net = narrow()
    pp = powerprop_model(net, alpha=1.0, prune_activations=False)
    x, _ = batch()
    torch.testing.assert_close(pp(x), net(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- the loaders
def rows(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def dump(path, obj, protocol):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root, n=3, protocol=2):
    """A tiny directory in the official layout: 5 training batches and a test batch of n
    images each, dicts keyed by bytes as the real files are, and batches.meta."""
    for i, name in enumerate(CIFAR10_FILES[:6]):
        dump(root / name, {b"batch_label": f"batch {i}".encode(), b"data": rows(n, i),
                           b"labels": [(i + j) % 10 for j in range(n)],
                           b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}, protocol)
    dump(root / CIFAR10_FILES[6], {b"num_cases_per_batch": n, b"num_vis": 3072,
                                   b"label_names": [f"class{c}".encode() for c in range(10)]}, protocol)


def write_cifar100(root, n=4, protocol=2):
    for i, name in enumerate(CIFAR100_FILES[:2]):
        dump(root / name, {b"batch_label": b"x", b"data": rows(n, 10 + i),
                           b"fine_labels": [99 - j - i for j in range(n)],
                           b"coarse_labels": [j % 20 for j in range(n)],
                           b"filenames": [b"f.png"] * n}, protocol)
    dump(root / CIFAR100_FILES[2], {b"fine_label_names": [b"c"] * 100,
                                    b"coarse_label_names": [b"s"] * 20}, protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_layout_and_labels(tmp_path, protocol):
    write_cifar10(tmp_path, n=3, protocol=protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.num_classes == 10
    assert ds.y_train.tolist() == [(i + j) % 10 for i in range(5) for j in range(3)]
    assert ds.y_test.tolist() == [5, 6, 7]
    # the row is 1024 red, 1024 green, 1024 blue values, each image row-major: NCHW
    raw = rows(3, 1)
    i, c, h, w = 2, 1, 5, 30
    assert ds.x_train[3 + i, c, h, w] == np.float32(raw[i, c * 1024 + h * 32 + w]) / np.float32(255)
    np.testing.assert_array_equal(ds.x_test.reshape(3, -1) * np.float32(255),
                                  rows(3, 5).astype(np.float32))
    sym = load_dataset("cifar10", data_dir=tmp_path, scale="symmetric")
    np.testing.assert_allclose(sym.x_train, 2 * ds.x_train - 1, atol=1e-6)
    assert ds.options == {"scale": "unit", "source": str(tmp_path / "cifar-10-batches-py")}


def test_cifar100_fine_labels_and_a_resnet_step(tmp_path):
    write_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path, scale="symmetric")
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.y_train.tolist() == [99, 98, 97, 96] and ds.num_classes == 100
    assert -1.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    net = narrow(num_classes=ds.num_classes)
    out = net(torch.from_numpy(ds.x_train[:2]))
    F.cross_entropy(out, torch.from_numpy(ds.y_train[:2])).backward()
    assert out.shape == (2, 100)


def test_missing_directory_names_the_expected_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py/data_batch_1.*"
                       + str(tmp_path / "nowhere")):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python/train"):
        load_dataset("cifar100", data_dir=tmp_path / "nowhere")
    write_cifar10(tmp_path)
    (tmp_path / CIFAR10_FILES[5]).unlink()
    with pytest.raises(DatasetNotFoundError, match="missing: cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)


class _Opener:
    """Unpickling this calls builtins.open(marker, "w"): it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class _Shell:
    def __reduce__(self):
        return os.system, ("true",)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    control, marker = tmp_path / "control", tmp_path / "marker"
    pickle.loads(pickle.dumps({b"data": _Opener(control)})).get(b"data").close()
    assert control.exists()                # the crafted pickle does run code with plain pickle
    write_cifar10(tmp_path)
    dump(tmp_path / CIFAR10_FILES[0], {b"data": _Opener(marker), b"labels": []}, 2)
    with pytest.raises(DatasetFormatError, match=r"refused global (io|builtins)\.open"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    dump(tmp_path / "shell", [_Shell()], 4)
    with pytest.raises(DatasetFormatError, match=r"refused global (posix|os)\.system"):
        read_cifar_pickle(tmp_path / "shell")


def test_hostile_and_malformed_files(tmp_path):
    p = tmp_path / "f"

    def refused(payload, match):
        p.write_bytes(payload)
        with pytest.raises(DatasetFormatError, match=match):
            read_cifar_pickle(p)

    # a counted length far past the end is refused before anything is allocated
    refused(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx.", "not a CIFAR python-pickle batch")
    good = pickle.dumps({b"data": rows(2, 0), b"labels": [1, 2]}, protocol=2)
    refused(good[: len(good) // 2], "not a CIFAR")                               # truncated
    refused(pickle.dumps([1, 2]), "not a dict")
    refused(pickle.dumps({b"data": np.zeros(3, dtype=object)}, protocol=2), "dtype")
    # an array whose shape does not match its bytes
    refused(pickle.dumps({b"data": rows(2, 0)}, protocol=2).replace(b"K\x02M\x00\x0c", b"K\x03M\x00\x0c"),
            "does not match")

    # numpy.ndarray((5,)) would allocate any shape: the stand-in cannot be called
    refused(b"\x80\x02cnumpy\nndarray\nK\x05\x85\x85R.", "may not be called")
    # BUILD with (None, {"__init__": 1}) on a global would setattr on it: refused, and the
    # loader still works afterwards (nothing of the module was changed)
    refused(b"\x80\x02cnumpy\ndtype\nN}U\x08__init__K\x01s\x86b.", "BUILD on a global")
    refused(b"\x80\x02c_codecs\nencode\nN}U\x0c__defaults__K\x01s\x86b.", "BUILD on a global")
    p.write_bytes(good)
    assert read_cifar_pickle(p)[b"labels"] == [1, 2]
    # _reconstruct of another type than ndarray, and a dtype that is not plain numeric
    refused(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85U\x01b\x87R.",
            "other than numpy.ndarray")
    refused(b"\x80\x02cnumpy\ndtype\nU\x02O8K\x00K\x01\x87R.", "plain numeric dtype")

    def bad_batch(obj, match):
        write_cifar10(tmp_path / "d")
        dump(tmp_path / "d" / CIFAR10_FILES[0], obj, 2)
        with pytest.raises(DatasetFormatError, match=match):
            load_dataset("cifar10", data_dir=tmp_path / "d")

    bad_batch({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "uint8 \\(N, 3072\\)")
    bad_batch({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8")
    bad_batch({b"data": rows(2, 0), b"labels": [0, 10]}, "ints in \\[0, 10\\)")
    bad_batch({b"data": rows(2, 0), b"labels": [0]}, "list of 2 ints")
    bad_batch({b"data": rows(2, 0), b"labels": [0, True]}, "list of 2 ints")


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for ``{"data": array, "labels": [...]}``
    as the official CIFAR files do: str as (SHORT_)BINSTRING, numpy as ``numpy.core.multiarray
    _reconstruct`` + BUILD (memo opcodes left out, they change nothing)."""
    def s(text: bytes) -> bytes:
        return (b"U" + bytes([len(text)]) if len(text) < 256 else b"T" + struct.pack("<i", len(text))) + text

    rows_, cols = data.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
             + b"(K\x01K" + bytes([rows_]) + b"M" + struct.pack("<H", cols) + b"\x86"
             + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             + b"\x89" + s(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


def test_the_python2_format_of_the_official_files(tmp_path):
    write_cifar10(tmp_path, n=3)
    data = rows(3, 42)
    raw = py2_batch(data, [9, 0, 4])
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw
    (tmp_path / CIFAR10_FILES[0]).write_bytes(raw)
    batch = read_cifar_pickle(tmp_path / CIFAR10_FILES[0])
    np.testing.assert_array_equal(batch[b"data"], data)
    assert batch[b"labels"] == [9, 0, 4]
    # the stdlib reads these bytes the same way (numpy's own reconstruction): same content
    plain = pickle.loads(raw, encoding="bytes")
    np.testing.assert_array_equal(plain[b"data"], batch[b"data"])
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.y_train[:3].tolist() == [9, 0, 4]
    np.testing.assert_array_equal(ds.x_train[:3].reshape(3, -1) * np.float32(255), data.astype(np.float32))
