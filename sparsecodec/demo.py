"""``python -m sparsecodec.demo``: a codec report on a sample model update.

The sample update has the layer shapes of FLARE's MNIST CNN (582k parameters) with
heavy-tailed values, as real gradients have. For several densities it encodes the whole
update as one bundle and prints, per section, the real bits beside the bound, plus encode
and decode speed. Every number comes from the bytes produced in this run.
"""

from __future__ import annotations

import time

import numpy as np

import sparsecodec as sc

SHAPES = {  # FLARE MNIST CNN layer shapes (Greidi & Cohen, arXiv 2312.13795; docs/flare.md, "Models")
    "conv1.weight": (32, 1, 5, 5), "conv1.bias": (32,),
    "conv2.weight": (64, 32, 5, 5), "conv2.bias": (64,),
    "fc1.weight": (512, 1024), "fc1.bias": (512,),
    "fc2.weight": (10, 512), "fc2.bias": (10,),
}


def sample_update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in SHAPES.items():
        scale = rng.lognormal(0.0, 1.0, size=shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
        out[name] = (rng.standard_t(3, size=shape) * scale * 1e-3).astype(np.float32)
    return out


def _time(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    update = sample_update()
    numel = sum(v.size for v in update.values())
    print(f"sparsecodec {sc.__version__} demo: one model update, {len(update)} tensors, {numel:,} parameters\n")
    dense = sc.encode_bundle(update, sc.Dense())
    print(f"dense fp32 bundle: {dense.nbits:,} bits = {dense.bpp:.3f} bits/parameter\n")
    hdr = (f"{'density':>8} {'scope':>6} {'k':>7} {'index bits':>11} {'bound':>10} {'ratio':>6} "
           f"{'value bits':>10} {'header':>7} {'total':>9} {'bpp':>7} {'vs dense':>8} {'enc ms':>7} {'dec ms':>7}")
    print(hdr)
    print("-" * len(hdr))
    for density in (1e-4, 1e-3, 1e-2, 0.1):
        for scope in ("tensor", "global"):
            codec = sc.TopK(density=density)
            sc.encode_bundle(update, codec, scope=scope)          # warm-up (JIT)
            frame = sc.encode_bundle(update, codec, scope=scope)
            data = bytes(frame)
            t_enc = _time(lambda: sc.encode_bundle(update, codec, scope=scope))
            t_dec = _time(lambda: sc.decode_bundle(data))
            parts = sc.decode_bundle(data)
            bound = sum(sc.bounds.topk_index_bits(update[n].size, int(np.count_nonzero(parts[n])))
                        for n in update)
            k = sum(int(np.count_nonzero(v)) for v in parts.values())
            s = frame.sections
            print(f"{density:>8g} {scope:>6} {k:>7} {s['index']:>11,} {bound:>10,.0f} "
                  f"{s['index'] / max(bound, 1e-9):>6.3f} {s['values']:>10,} {s['header']:>7,} "
                  f"{frame.nbits:>9,} {frame.bpp:>7.4f} {dense.nbits / frame.nbits:>7.1f}x "
                  f"{1e3 * t_enc:>7.2f} {1e3 * t_dec:>7.2f}")
    print("\nratio = index bits (incl. each tensor's k) / sum of log2 C(numel, k) per tensor;"
          "\nheader = per-tensor names, shapes and coder ids plus one CRC-32 for the message.")
    codec = sc.TopK.flare(R=0.001)
    plain = sc.encode_bundle(update, codec)
    compact = sc.encode_bundle(update, codec, schema=sc.Schema.from_tensors(update))
    print(f"\nFLARE's rule at R = 0.001 % ({len(update)} tensors, "
          f"round(size*R/100)+1 each): {plain.nbits:,} bits per message, header {plain.sections['header']:,};"
          f"\nwith a shared sc.Schema: {compact.nbits:,} bits, header {compact.sections['header']:,}.")
    spec = sc.MessageSpec.from_tensors(update, codec)
    packed = sc.encode_packed(update, spec)
    ks = [codec.k_for(int(np.size(v))) for v in update.values()]
    bound = sum(sc.bounds.topk_index_bits(int(np.size(v)), k) for v, k in zip(update.values(), ks)) + 32 * sum(ks)
    print(f"as a compact message (sc.MessageSpec: names, shapes, codec and k known to both ends): "
          f"{packed.nbits:,} bits, header + CRC {packed.sections['header'] + packed.sections['checksum']}, "
          f"against a bound of {bound:,.0f} (index at log2 C(n, k) + fp32 values).")


if __name__ == "__main__":
    main()
