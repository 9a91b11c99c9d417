"""Golden *encodings*: the exact bytes every explicit coder writes for a fixed input and config.

``tests/test_golden.py`` checks that committed frames still *decode*; it cannot see an
encoder whose output changed but still decodes (a new tie-break, another zstd level, a
reordered field). This file pins the other direction: for each case below, a seeded input is
encoded now and the bytes must equal ``tests/golden/encodings/<case>.bin``; the golden bytes
must also still decode to the array recorded in ``manifest.json`` (``decoded_sha256``) and to
what the input implies (the input itself for lossless codecs, zero off the top-k support for
TopK).

The cases: every TopK index coder (``sparsecodec.indices.INDEX_CODERS``) x every value coder
(``sparsecodec.values.VALUE_CODERS``), read from the tables, so a coder registered without a
golden encoding fails ``test_every_coder_is_pinned``; Dense raw and zstd for each dtype;
MaskCodec's adaptive, fixed-p and per-entry models (one and two lanes); a bundle (tensor and
global scope), a schema bundle, compact messages (``scope="tensor"`` and ``"global"``) and a
model patch.

Regenerating is never automatic. After a *deliberate* bitstream change (with a
FORMAT_VERSION bump and a reader for the old frames, see tests/test_golden.py), or to add the
cases of a newly registered coder::

    .venv/bin/python tests/test_golden_encodings.py --regen            # writes missing cases only
    .venv/bin/python tests/test_golden_encodings.py --regen --force    # also rewrites changed ones

``--regen`` alone never overwrites an existing file; ``--force`` prints every case it changes.
Cases that go through zstd (Dense zstd, the ``zstd`` index coder) also pin the libzstd
version: the manifest records it, and a mismatch is named in the failure message.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import sparsecodec as sc
from sparsecodec.indices import INDEX_CODERS
from sparsecodec.mask import MaskCodec
from sparsecodec.patch import apply_patch, changed_positions, decode_patch, encode_patch
from sparsecodec.values import VALUE_CODERS

HERE = Path(__file__).resolve().parent / "golden" / "encodings"
MANIFEST = HERE / "manifest.json"
REGEN = "python tests/test_golden_encodings.py --regen [--force]"


def _zstd_version() -> str:
    import zstandard

    return ".".join(map(str, zstandard.ZSTD_VERSION))


@dataclass
class Case:
    name: str
    config: dict[str, Any]          # what produced the bytes (JSON, written to the manifest)
    encode: Callable[[], bytes]
    decode: Callable[[bytes], Any]  # the golden bytes -> array or {name: array}
    check: Callable[[Any], None]    # what the input implies about the decoded result
    uses_zstd: bool = False


def _rng(name: str) -> np.random.Generator:
    # one generator per case, seeded from its name: adding a case never shifts another's input
    return np.random.default_rng(zlib.crc32(name.encode()))


def _digest(decoded: Any) -> str:
    """sha256 over dtype, shape and bytes (of each array, by sorted name for a dict)."""
    h = hashlib.sha256()
    items = sorted(decoded.items()) if isinstance(decoded, dict) else [("", decoded)]
    for name, a in items:
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _equal(expected: np.ndarray) -> Callable[[Any], None]:
    def check(got: Any) -> None:
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()
    return check


def _equal_all(expected: dict[str, np.ndarray]) -> Callable[[Any], None]:
    def check(got: Any) -> None:
        assert sorted(got) == sorted(expected)
        for name, e in expected.items():
            _equal(e)(got[name])
    return check


def _topk_support(x: np.ndarray, idx: np.ndarray, exact: bool) -> Callable[[Any], None]:
    """Zero off the top-k support ``idx`` (any value coder), and the values themselves if exact."""
    def check(got: Any) -> None:
        assert got.dtype == x.dtype and got.shape == x.shape
        flat = got.reshape(-1)
        off = np.ones(flat.size, bool)
        off[idx] = False
        assert not np.any(flat[off]), "a decoded nonzero lies off the top-k support"
        if exact:
            assert flat[idx].tobytes() == x.reshape(-1)[idx].tobytes()
    return check


def _topk_cases():
    for index in sorted(INDEX_CODERS):
        for values in sorted(VALUE_CODERS):
            name = f"topk_{index}_{values}"
            x = (_rng(name).standard_t(3, size=(12, 25)) * 0.01).astype(np.float32)   # 300 entries
            codec = sc.TopK(density=0.1, index=index, values=values)
            idx = sc.topk_indices(x.reshape(-1), codec.k_for(x.size))
            yield Case(name, codec.get_config() | {"input": "float32[12, 25] t(3)*0.01"},
                       lambda c=codec, x=x: bytes(c.encode(x)), sc.decode,
                       _topk_support(x, idx, exact=values in ("fp32", "fp64")), uses_zstd=index.startswith("zstd"))
    # a float64 input, a CRC'd frame and FLARE's k rule: other header paths of the same coders
    name = "topk_float64_crc"
    x = _rng(name).standard_normal(257)
    codec = sc.TopK(k=19, index="eliasfano", values="fp64", checksum=True)
    yield Case(name, codec.get_config() | {"input": "float64[257] normal"},
               lambda c=codec, x=x: bytes(c.encode(x)), sc.decode,
               _topk_support(x, sc.topk_indices(x, 19), exact=True))
    name = "topk_flare_golomb"
    x = _rng(name).standard_normal(400).astype(np.float32)
    flare = sc.TopK.flare(R=5.0, index="golomb")
    yield Case(name, flare.get_config() | {"input": "float32[400] normal"},
               lambda c=flare, x=x: bytes(c.encode(x)), sc.decode,
               _topk_support(x, sc.topk_indices(x, flare.k_for(400)), exact=True))


def _dense_input(rng: np.random.Generator, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return rng.random(300) < 0.2
    if dtype == "uint8":
        return rng.integers(0, 6, size=(10, 30), dtype=np.uint8)
    # smooth-ish values: zstd has structure to find, the raw bytes are still every bit
    return (np.cumsum(rng.standard_normal(300)) * 0.1).astype(dtype)


def _dense_cases():
    from sparsecodec.frame import DTYPE_CODES

    for dtype in sorted(DTYPE_CODES):
        for compression in (None, "zstd"):
            name = f"dense_{compression or 'raw'}_{dtype}"
            x = _dense_input(_rng(name), dtype)
            codec = sc.Dense(compression=compression, checksum=compression == "zstd")
            yield Case(name, codec.get_config() | {"input": f"{dtype}{list(x.shape)}"},
                       lambda c=codec, x=x: bytes(c.encode(x)), sc.decode, _equal(x),
                       uses_zstd=compression == "zstd")


def _mask_cases():
    name = "mask_adaptive"
    m = _rng(name).random(400) < 0.1
    yield Case(name, MaskCodec().get_config() | {"model": "adaptive", "input": "bool[400] p=0.1"},
               lambda m=m: bytes(MaskCodec().encode(m)), sc.decode, _equal(m))
    name = "mask_adaptive_uint8_2d"
    mu = (_rng(name).random((15, 20)) < 0.4).astype(np.uint8)
    yield Case(name, MaskCodec().get_config() | {"model": "adaptive", "input": "uint8[15, 20] p=0.4"},
               lambda m=mu: bytes(MaskCodec().encode(m)), sc.decode, _equal(mu))
    for lanes in (1, 2):
        name = f"mask_fixed_lanes{lanes}"
        mf = _rng(name).random(500) < 0.05
        codec = MaskCodec(lanes=lanes, checksum=lanes == 2)
        yield Case(name, codec.get_config() | {"model": "fixed", "p": 0.05, "input": "bool[500] p=0.05"},
                   lambda c=codec, m=mf: bytes(c.encode(m, p=0.05)), sc.decode, _equal(mf))
        name = f"mask_per_entry_lanes{lanes}"
        rng = _rng(name)
        p = rng.beta(0.5, 0.5, 500)
        mp = rng.random(500) < p
        codec = MaskCodec(lanes=lanes)
        yield Case(name, codec.get_config() | {"model": "per-entry", "input": "bool[500], p ~ beta(.5,.5) float64"},
                   lambda c=codec, m=mp, p=p: bytes(c.encode(m, p=p)),
                   lambda data, p=p: sc.decode(data, p=p), _equal(mp))


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"conv.weight": (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32),   # 108
            "conv.bias": rng.standard_normal(4).astype(np.float32),
            "fc.weight": (rng.standard_normal((10, 20)) * 0.05).astype(np.float32),        # 200
            "mask": rng.random(64) < 0.3}


def _bundle_cases():
    def codecs() -> dict[str, Any]:
        return {"conv.weight": sc.TopK(density=0.1, index="golomb"),
                "conv.bias": sc.Dense(),
                "fc.weight": sc.TopK(k=12, index="bitmap", values="fp16"),
                "mask": MaskCodec()}

    def configs(cs: dict[str, Any]) -> dict[str, Any]:
        return {n: c.get_config() for n, c in cs.items()}

    name = "bundle_tensor"
    u = _model(_rng(name))
    cs = codecs()
    exp = {n: cs[n].encode_and_reconstruct(u[n])[1] for n in u}
    yield Case(name, {"codecs": configs(cs), "scope": "tensor"},
               lambda u=u, cs=cs: bytes(sc.encode_bundle(u, cs)), sc.decode_bundle, _equal_all(exp))

    name = "bundle_global"
    ug = {n: a for n, a in _model(_rng(name)).items() if n != "mask"}
    gcodec = sc.TopK(density=0.05, index="eliasfano")
    chosen = sc.topk_indices_global([a.reshape(-1) for a in ug.values()],
                                    gcodec.k_for(sum(a.size for a in ug.values())))
    expg = {}
    for (n, a), idx in zip(ug.items(), chosen):
        e = np.zeros_like(a)
        e.reshape(-1)[idx] = a.reshape(-1)[idx]
        expg[n] = e
    yield Case(name, {"codec": gcodec.get_config(), "scope": "global"},
               lambda u=ug, c=gcodec: bytes(sc.encode_bundle(u, c, scope="global")), sc.decode_bundle,
               _equal_all(expg))

    name = "bundle_schema"
    us = _model(_rng(name))
    schema = sc.Schema.from_tensors(us)
    css = codecs()
    exps = {n: css[n].encode_and_reconstruct(us[n])[1] for n in us}
    yield Case(name, {"codecs": configs(css), "schema": [list(e) for e in schema.entries]},
               lambda u=us, cs=css, s=schema: bytes(sc.encode_bundle(u, cs, schema=s)),
               lambda data, s=schema: sc.decode_bundle(data, schema=s), _equal_all(exps))


def _compact_cases():
    name = "compact_tensor"
    u = _model(_rng(name))
    cs = {"conv.weight": sc.TopK(density=0.1, index="golomb"),    # k=11 with an explicit coder
          "conv.bias": sc.TopK(k=2),                              # auto, small k: ranked exactly
          "fc.weight": sc.TopK.flare(R=2.0, values="bf16"),       # k=5, ranked; bf16 values
          "mask": MaskCodec()}
    spec = sc.MessageSpec(sc.Schema.from_tensors(u), cs)
    exp = {n: cs[n].encode_and_reconstruct(u[n])[1] for n in u}
    yield Case(name, {"codecs": {n: c.get_config() for n, c in cs.items()}, "scope": "tensor",
                      "schema": [list(e) for e in spec.schema.entries]},
               lambda u=u, s=spec: bytes(sc.encode_packed(u, s)),
               lambda data, s=spec: sc.decode_packed(data, s), _equal_all(exp))

    for index in ("auto", "raw"):   # one ranked support, one coded by an explicit coder
        name = f"compact_global_{index}"
        ug = {n: a for n, a in _model(_rng(name)).items() if n != "mask"}
        gcodec = sc.TopK(density=0.1 if index == "raw" else 0.05, index=index)
        gspec = sc.MessageSpec(sc.Schema.from_tensors(ug), gcodec, scope="global")
        chosen = sc.topk_indices_global([a.reshape(-1) for a in ug.values()],
                                        gcodec.k_for(sum(a.size for a in ug.values())))
        expg = {}
        for (n, a), idx in zip(ug.items(), chosen):
            e = np.zeros_like(a)
            e.reshape(-1)[idx] = a.reshape(-1)[idx]
            expg[n] = e
        yield Case(name, {"codec": gcodec.get_config(), "scope": "global", "checksum": index == "auto",
                          "schema": [list(e) for e in gspec.schema.entries]},
                   lambda u=ug, s=gspec, c=index == "auto": bytes(sc.encode_packed(u, s, checksum=c)),
                   lambda data, s=gspec: sc.decode_packed(data, s), _equal_all(expg))


def _compact_values_message_case():
    """values_scope="message": one q8b block (one bfloat16 scale) and one q8 block (issue 18)."""
    name = "compact_values_message"
    u = {n: a for n, a in _model(_rng(name)).items() if n != "mask"}
    cs = {"conv.weight": sc.TopK(density=0.1, values="q8b"),
          "conv.bias": sc.TopK(k=2, values="q8b"),
          "fc.weight": sc.TopK.flare(R=2.0, values="q8")}
    spec = sc.MessageSpec(sc.Schema.from_tensors(u), cs, values_scope="message")
    exp: dict[str, np.ndarray] = {}
    sc.encode_packed(u, spec, on_encoded=lambda n, r: exp.__setitem__(n, r.to_dense()))
    yield Case(name, {"codecs": {n: c.get_config() for n, c in cs.items()}, "scope": "tensor",
                      "values_scope": "message", "schema": [list(e) for e in spec.schema.entries]},
               lambda u=u, s=spec: bytes(sc.encode_packed(u, s)),
               lambda data, s=spec: sc.decode_packed(data, s), _equal_all(exp))


def _patch_case():
    name = "patch"
    rng = _rng(name)
    old = {n: a for n, a in _model(rng).items() if n != "mask"}
    new = {n: a.copy() for n, a in old.items()}
    new["conv.weight"].reshape(-1)[[3, 50, 77]] += 0.5                   # small k: ranked
    flat = new["fc.weight"].reshape(-1)
    pos = np.sort(rng.choice(flat.size, 60, replace=False))              # k=60 > 48: coded
    flat[pos] = rng.standard_normal(60).astype(np.float32)
    schema = sc.Schema.from_tensors(old)
    supports = {n: changed_positions(old[n], new[n]) for n in old}

    def decode(data: bytes) -> dict[str, np.ndarray]:
        replica = {n: a.copy() for n, a in old.items()}
        assert apply_patch(replica, 7, decode_patch(data, schema), schema) == 8
        return replica

    yield Case(name, {"schema": [list(e) for e in schema.entries], "base": 7, "version": 8,
                      "k": {n: int(s.size) for n, s in supports.items()}},
               lambda: bytes(encode_patch(new, supports, schema, base=7, version=8)),
               decode, _equal_all(new))


def cases() -> list[Case]:
    return [*_topk_cases(), *_dense_cases(), *_mask_cases(), *_bundle_cases(), *_compact_cases(),
            *_compact_values_message_case(), *_patch_case()]


CASES = cases()


def _manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"cases": {}}


def test_every_coder_is_pinned():
    pinned = set(_manifest()["cases"])
    missing = sorted(c.name for c in CASES if c.name not in pinned)
    assert not missing, f"no golden encoding for {missing}: run `{REGEN}` (without --force)"
    stale = sorted(pinned - {c.name for c in CASES})
    assert not stale, f"manifest cases no longer generated: {stale}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_encoding_is_pinned(case: Case):
    entry = _manifest()["cases"].get(case.name)
    if entry is None:
        pytest.fail(f"{case.name}: no golden encoding; run `{REGEN}`")
    golden = (HERE / f"{case.name}.bin").read_bytes()
    assert hashlib.sha256(golden).hexdigest() == entry["sha256"], f"{case.name}.bin differs from its manifest"
    assert entry["format_version"] == sc.FORMAT_VERSION, "FORMAT_VERSION changed: regenerate deliberately"
    data = case.encode()
    if data != golden:
        first = next((i for i, (a, b) in enumerate(zip(data, golden)) if a != b), min(len(data), len(golden)))
        why = ""
        if case.uses_zstd and entry.get("zstd") != _zstd_version():
            why = f" (libzstd is {_zstd_version()}, the golden bytes were written with {entry.get('zstd')})"
        pytest.fail(f"{case.name}: the encoder's bytes changed{why}: {len(data)} bytes now, "
                    f"{len(golden)} golden, first difference at byte {first}. If deliberate, bump "
                    f"FORMAT_VERSION or document why, then `{REGEN}`")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_encoding_decodes(case: Case):
    entry = _manifest()["cases"].get(case.name)
    if entry is None:
        pytest.fail(f"{case.name}: no golden encoding; run `{REGEN}`")
    decoded = case.decode((HERE / f"{case.name}.bin").read_bytes())
    assert _digest(decoded) == entry["decoded_sha256"], f"{case.name}: golden bytes decode differently"
    case.check(decoded)


def regenerate(force: bool) -> int:
    HERE.mkdir(parents=True, exist_ok=True)
    manifest = _manifest()
    old = manifest["cases"]
    new: dict[str, Any] = {}
    changed = 0
    for case in CASES:
        data = case.encode()
        path = HERE / f"{case.name}.bin"
        if path.exists() and case.name in old and path.read_bytes() != data:
            if not force:
                print(f"KEPT {case.name}: its bytes changed; rerun with --force to rewrite it")
                new[case.name] = old[case.name]
                continue
            print(f"REWROTE {case.name}: {path.stat().st_size} -> {len(data)} bytes")
            changed += 1
        elif not path.exists() or case.name not in old:
            print(f"ADDED {case.name}: {len(data)} bytes")
            changed += 1
        path.write_bytes(data)
        entry = {"config": case.config, "format_version": sc.FORMAT_VERSION, "nbytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "decoded_sha256": _digest(case.decode(data))}
        if case.uses_zstd:
            entry["zstd"] = _zstd_version()
        new[case.name] = entry
    for stale in sorted(set(old) - set(new)):
        print(f"DROPPED {stale} (no longer generated)")
        (HERE / f"{stale}.bin").unlink(missing_ok=True)
    MANIFEST.write_text(json.dumps({"regenerate": REGEN, "sparsecodec": sc.__version__, "cases": new},
                                   indent=1, sort_keys=True) + "\n")
    print(f"{changed} case(s) written, {len(new)} pinned in {MANIFEST}")
    return 0


if __name__ == "__main__":
    if "--regen" not in sys.argv[1:]:
        sys.exit(f"usage: {REGEN}   (tests run this file through pytest)")
    sys.exit(regenerate(force="--force" in sys.argv[1:]))
