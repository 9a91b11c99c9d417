"""Write the committed golden frames of the core codecs. Run by hand, ONCE per format change:

    .venv/bin/python tests/golden/make_core_golden.py

Tests never run this: they only check that the committed frames still decode to the
committed arrays, so a change that breaks old frames fails instead of being papered over.
Existing files are never overwritten (encoders may legitimately change their choices; the
old frames must keep decoding): only cases whose files are missing are written.
"""

import json
from pathlib import Path

import numpy as np

import sparsecodec as sc

HERE = Path(__file__).resolve().parent / "core"


def cases():
    rng = np.random.default_rng(20261121)
    x = (rng.standard_t(3, size=(48, 40)) * 0.01).astype(np.float32)
    x64 = rng.standard_normal(3000)
    for index in ("raw", "golomb", "eliasfano", "bitmap", "zstd", "gaps"):
        yield f"topk_{index}_fp32", sc.TopK(density=0.05, index=index), x
    yield "topk_bitmap_dense", sc.TopK(density=0.4, index="bitmap"), x
    yield "topk_auto_bf16_crc", sc.TopK(k=37, values="bf16", checksum=True), x
    yield "topk_fp16", sc.TopK(k=20, values="fp16"), x
    yield "topk_fp64", sc.TopK(density=0.01, values="fp64"), x64
    yield "topk_nnz", sc.TopK(k="nnz"), np.where(np.abs(x) > 0.02, x, 0).astype(np.float32)
    yield "topk_flare", sc.TopK.flare(R=1.0), x
    yield "topk_k0", sc.TopK(k=0), x
    yield "dense_fp32", sc.Dense(), x[:5]
    yield "dense_zstd_crc", sc.Dense(compression="zstd", checksum=True), x64[:500]
    yield "dense_bool", sc.Dense(), rng.random(77) < 0.3


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, codec, x in cases():
        if (HERE / f"{name}.bin").exists():
            continue
        frame = codec.encode(x)
        (HERE / f"{name}.bin").write_bytes(bytes(frame))
        np.save(HERE / f"{name}.npy", codec.decode(bytes(frame)))
    update = {"conv.weight": np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32),
              "conv.bias": np.arange(8, dtype=np.float32)}
    if not (HERE / "bundle_global.bin").exists():
        frame = sc.encode_bundle(update, sc.TopK(density=0.1), scope="global")
        (HERE / "bundle_global.bin").write_bytes(bytes(frame))
        np.savez(HERE / "bundle_global.npz", **sc.decode_bundle(bytes(frame)))
    schema = sc.Schema.from_tensors(update)
    if not (HERE / "bundle_schema.bin").exists():
        frame = sc.encode_bundle(update, sc.TopK(k=5), schema=schema)
        (HERE / "bundle_schema.bin").write_bytes(bytes(frame))
        (HERE / "bundle_schema.json").write_text(json.dumps([list(e) for e in schema.entries]))
        np.savez(HERE / "bundle_schema.npz", **sc.decode_bundle(bytes(frame), schema=schema))
    if not (HERE / "compact_message.bin").exists():
        # a compact message and the MessageSpec JSON both ends hold (also pins that JSON format)
        spec = sc.MessageSpec(schema, {"conv.weight": sc.TopK.flare(R=10.0, values="q8b"),
                                       "conv.bias": sc.Dense()})
        frame = sc.encode_packed(update, spec)
        (HERE / "compact_message.bin").write_bytes(bytes(frame))
        (HERE / "compact_message.spec.json").write_text(spec.to_json() + "\n")
        np.savez(HERE / "compact_message.npz", **sc.decode_packed(bytes(frame), spec))
    print(f"wrote {len(list(HERE.glob('*.bin')))} frames to {HERE}")


if __name__ == "__main__":
    main()
