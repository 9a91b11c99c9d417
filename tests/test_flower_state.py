"""fl.flower.state: node state as bytes, exact class names only, bounded sizes, one error type."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import sparsecodec as sc
from fl.algorithms.base import ServerState
from fl.algorithms.ec import ECClientState
from fl.algorithms.ef21 import EF21ClientState, EF21ServerState
from fl.algorithms.fedpm import FedPMClientState, FedPMServerState
from fl.algorithms.flare import FLAREClientState
from fl.algorithms.proxskip import ProxSkipClientState
from fl.flower.state import MAGIC, STATE_CLASSES, StateError, decode_state, encode_state


def _craft(tree, arrays_meta, payload: bytes = b"") -> bytes:
    """A state with a hand-written skeleton: what an attacker controls."""
    skeleton = json.dumps({"v": tree, "a": arrays_meta}).encode()
    return MAGIC + struct.pack("<I", len(skeleton)) + skeleton + payload


def _adam_state() -> dict:
    w = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(5, 3)
    opt.step()
    return opt.state_dict()


def _examples() -> list:
    rng = np.random.default_rng(0)
    ef = sc.ErrorFeedback()
    ef.step("w", rng.standard_normal(7).astype(np.float32), sc.TopK(k=2))
    flare = FLAREClientState()
    flare.feedback.step("c", rng.standard_normal((2, 3)).astype(np.float32), sc.TopK(k=1))
    params = {"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
    return [ECClientState(ef), flare, FedPMClientState(_adam_state()), FedPMClientState(None),
            FedPMServerState(params, round=3, seed=7), EF21ClientState(None), EF21ClientState(params),
            EF21ServerState(params, {0: params, 5: {}}), ProxSkipClientState(params["w"].ravel(), None, 2),
            ServerState(params), ef,
            {0: (1, 2.5, None, b"\x00\xff"), "lr": [0.1, True, float("nan")], ("a", 1): {"$x": -0.0},
             "np": [np.float64(1.5), np.int8(-3), np.arange(6, dtype=">i4").reshape(2, 3)],
             "t": [torch.tensor(2.0), torch.arange(3, dtype=torch.bfloat16), torch.zeros((0, 4))]}]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=") \
            and a.shape == b.shape and a.tobytes() == b.astype(a.dtype).tobytes()
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, sc.ErrorFeedback):
        return _same(a.state_dict(), b.state_dict())
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return type(a) is type(b) and a == b and str(a) == str(b)      # str: -0.0 vs 0.0


@pytest.mark.parametrize("i", range(len(_examples())))
def test_every_state_class_round_trips_bit_for_bit(i):
    state = _examples()[i]
    back = decode_state(encode_state(state))
    assert _same(state, back)
    if isinstance(state, FedPMClientState) and state.optimizer is not None:
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(5, 3))], lr=0.1)
        opt.load_state_dict(back.optimizer)                # usable as is (0-d "step" stays 0-d)
        assert back.optimizer["state"][0]["step"].shape == ()


def test_the_registry_is_exact_and_every_name_resolves():
    from fl.flower.state import _load_class

    for name, entry in STATE_CLASSES.items():
        cls = _load_class(name, entry)
        assert f"{cls.__module__}:{cls.__qualname__}" == name


@pytest.mark.parametrize("name", [
    "subprocess:Popen", "tempfile:TemporaryDirectory", "socket:socket", "torch.nn:Linear",
    "fl.algorithms.base:ClientData",                         # an fl class, but not a state class
    "fl.flower.state:_Decoder", "fl.algorithms.ec:ECClientState.__init__",   # attribute paths
    "fl.algorithms.ec:sc.feedback.ErrorFeedback", "fl:algorithms.ec.ECClientState",
    "fl.algorithms.ec.os:system", "this:x"])
def test_a_class_outside_the_registry_is_refused_without_importing_anything(name):
    before = set(sys.modules)
    for tree in ({"$dc": name, "f": {}}, {"$sd": name, "s": {}}):
        with pytest.raises(StateError, match="not a registered state class"):
            decode_state(_craft(tree, []))
    assert set(sys.modules) == before                    # "this" would print the Zen on import


def test_wrong_kind_of_class_and_mistyped_fields_are_state_errors():
    with pytest.raises(StateError, match="not one"):
        decode_state(_craft({"$dc": "sparsecodec.feedback:ErrorFeedback", "f": {}}, []))
    with pytest.raises(StateError, match="is a dataclass"):
        decode_state(_craft({"$sd": "fl.algorithms.base:ServerState", "s": {}}, []))
    with pytest.raises(StateError, match="params must be"):
        decode_state(_craft({"$dc": "fl.algorithms.base:ServerState", "f": {"params": "x"}}, []))
    with pytest.raises(StateError, match="round must be"):
        decode_state(_craft({"$dc": "fl.algorithms.fedpm:FedPMServerState",
                             "f": {"params": {}, "round": True, "seed": 0}}, []))
    with pytest.raises(StateError, match="has fields"):
        decode_state(_craft({"$dc": "fl.algorithms.base:ServerState", "f": {}}, []))
    with pytest.raises(StateError, match="state_dict of"):
        decode_state(_craft({"$sd": "sparsecodec.feedback:ErrorFeedback", "s": {"residuals": {"w": 1}}}, []))


@dataclass
class _Mine:
    x: int


def test_unregistered_classes_fail_at_encode_and_travel_when_named():
    with pytest.raises(sc.ConfigError, match="not a registered state class"):
        encode_state(_Mine(1))
    with pytest.raises(sc.ConfigError, match="without pickle"):
        encode_state(object())
    with pytest.raises(sc.ConfigError, match="numeric dtypes"):
        encode_state(np.array(["a"]))
    data = encode_state(_Mine(3), classes=[_Mine])
    assert decode_state(data, classes=[_Mine]) == _Mine(3)
    with pytest.raises(StateError, match="not a registered"):
        decode_state(data)
    with pytest.raises(StateError, match="not a registered"):           # narrowed out
        decode_state(encode_state(ServerState({})), allowed_modules=("sparsecodec",))


_HANG = textwrap.dedent("""
    import io, json, struct, sys
    import numpy as np
    from fl.flower.state import StateError, decode_state
    # the pre-issue-16 attack: FLST1 and an npy header of 2**62 zero-size elements (147 bytes)
    skel = json.dumps({"$nd": 0}).encode()
    hdr = "{'descr': [('a', 'V0')], 'fortran_order': False, 'shape': (%d,), }" % 2**62
    npy = b"\\x93NUMPY\\x01\\x00" + struct.pack("<H", len(hdr) + 1) + hdr.encode() + b"\\n"
    old = b"FLST1" + struct.pack("<I", len(skel)) + skel + npy
    cases = [old]
    for dt, shape in [("|V0", [2**62]), ("<U0", [2**62]), ("|u1", [2**62]), ("|u1", [0, 2**63]),
                      ("|u1", [0, 2**62, 2**62]), ("|u1", [1] * 40), ("<f4", [-1]), ("<f4", [1.5])]:
        skel = json.dumps({"v": {"$nd": 0}, "a": [[dt, shape]]}).encode()
        cases.append(b"FLST2" + struct.pack("<I", len(skel)) + skel)
    for data in cases:
        try:
            decode_state(data)
        except StateError as exc:
            print("StateError", exc)
        else:
            sys.exit("accepted")
""")


def test_zero_itemsize_and_unrepresentable_shapes_are_refused_before_numpy():
    # in a child with a timeout: the old decoder hung in numpy's C code, where no signal stops it
    out = subprocess.run([sys.executable, "-c", _HANG], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 9 and all(line.startswith("StateError") for line in lines), out.stdout
    assert "FLST1" in lines[0] and "max_numel" in lines[3]


def test_declared_sizes_are_checked_before_allocating():
    tracemalloc.start()
    for data in (MAGIC + b"\xff\xff\xff\xff{}", _craft({"$nd": 0}, [["<f8", [1 << 31]]]),
                 _craft({"$nd": 0}, [["<f8", [1 << 20, 1 << 20]]]),
                 _craft({"$nd": 0}, [["<f8", [1 << 27]]], b"\x00" * 64)):
        with pytest.raises(StateError):
            decode_state(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    ok = _craft({"$nd": 0}, [["<f4", [100]]], b"\x00" * 400)
    assert decode_state(ok).shape == (100,)
    with pytest.raises(StateError, match="max_numel=99"):
        decode_state(ok, max_numel=99)
    with pytest.raises(StateError, match="max_bytes"):
        decode_state(ok, max_bytes=len(ok) - 1)
    with pytest.raises(StateError, match="max_skeleton_bytes"):
        decode_state(ok, max_skeleton_bytes=10)


@pytest.mark.parametrize("data, match", [
    (b"", "bad magic"), (b"FLST2\x00", "bad magic"), ("text", "bytes, not str"),
    (MAGIC + b"\x02\x00\x00\x00[]", "not {'v'"), (MAGIC + b"\x01\x00\x00\x00\xff", "corrupt"),
    (MAGIC + struct.pack("<I", 2000) + b"[" * 1000 + b"]" * 1000, "corrupt|deeply"),
    (MAGIC + struct.pack("<I", 5013) + b'{"v":' + b"1" * 5000 + b',"a":[]}', "corrupt.*digits"),
    (_craft({"$nd": 0}, []), "array 0 of 0"), (_craft({"$nd": True}, [["|u1", [0]]]), "array True"),
    (_craft([{"$nd": 0}, {"$nd": 0}], [["|u1", [0]]]), "used twice"),
    (_craft(None, [["|u1", [1]]], b"\x00"), "uses 0"), (_craft(None, [], b"\x00"), "declare 0 bytes"),
    (_craft({"$np": 0}, [["|u1", [1]]], b"\x00"), "scalar has shape"),
    (_craft({"$bytes": 0}, [["<f4", [1]]], b"\x00" * 4), "bytes stored"),
    (_craft({"$torch": 0}, [["<u4", [1]]], b"\x00" * 4), "torch has no"),
    (_craft({"$torch": 0, "bf16": 1}, [["<i2", [1]]], b"\x00" * 2), "bf16"),
    (_craft({"$nd": 0, "x": 1}, [["|u1", [0]]]), "keys"), (_craft({"$tuple": 3}, []), "not a list"),
    (_craft({"$dict": [[[1], 2]]}, []), "unhashable"), (_craft({"$dict": [[1]]}, []), "pairs"),
    (_craft({"$zz": 1}, []), "unknown tag"), (_craft({"a": [[[[]]]]}, {"x": 1}), "array table"),
    (_craft(json.loads("[" * 70 + "]" * 70), []), "deeply"),
])
def test_malformed_states_raise_one_error_type(data, match):
    with pytest.raises(StateError, match=match):
        decode_state(data)


def test_mutated_states_raise_only_state_errors():
    """A seeded fuzz over every example: byte flips, truncations, insertions (the long runner,
    tools/fuzz_long.py, does the same in millions of child processes)."""
    rng = np.random.default_rng(16)
    seeds = [encode_state(s) for s in _examples()]
    decoded = 0
    for i in range(3000):
        b = bytearray(seeds[i % len(seeds)])
        op = rng.integers(4)
        if op == 0:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        elif op == 1:
            del b[rng.integers(len(b)):]
        elif op == 2:
            at = int(rng.integers(len(b)))
            b[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        else:                     # a byte of the JSON part replaced by a JSON-ish character
            at = int(rng.integers(9, 9 + struct.unpack_from("<I", b, 5)[0]))
            b[at] = b'[]{}",:0-e$'[int(rng.integers(11))]
        try:
            decode_state(bytes(b))
            decoded += 1
        except StateError:
            pass
    assert 0 < decoded < 3000            # the fuzz reaches both outcomes
