"""Mask-codec benchmark: bits against the cross-entropy, and speed against the baselines.

``bench_mask(n, seed)`` returns one row per (profile, model): the coded bits (model + mask
sections: everything but the fixed tensor header and checksum), the whole frame, the bound
(cross-entropy under the given p, ``sparsecodec.bounds.mask_bits``; ``n * H_b(f)`` for the
adaptive model), and for the per-entry / fixed rows encode and decode speed of ours,
constriction's ANS coder (``perfect=False`` Bernoulli, optional: "skipped" when not
importable) and zstd(np.packbits(mask)) as the generic baseline, all measured in this run.

Profiles: constant p in {0.5, 0.1, 0.01, 1e-4}; per-entry p from Beta(0.5, 0.5), Beta(5, 5),
near-deterministic {0.01, 0.99}; FedPM: theta = sigmoid(scores) of a masked MLP 784-200-10
trained FedPM-style for 300 steps on MNIST (docs/fedpm.md, "FedPM": signed-constant frozen
weights, Bernoulli(theta) masks resampled each step, the official STE theta * dL/dm, Adam
lr 0.1, batch 128). Its scores are cached in ``benchmarks/data/fedpm_mlp_scores.npz``
(float16, ~160k entries) and regenerated only when missing. The FedPM row uses theta's own
size; the others use ``n``. Every mask is drawn from its p.

Speeds are Mbit/s of mask (n / seconds), best of ``repeat`` runs after a JIT warm-up, single
thread; ``*_cpu`` use the thread's CPU time (robust on a shared machine), the others wall time.

    python -m benchmarks.mask_bench            # n = 1e7 tables (masks, then index coders)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import zstandard

from sparsecodec.bounds import binary_entropy, mask_bits, topk_index_bits
from sparsecodec.entropy_index import decode_bitmap, decode_gaps, encode_bitmap, encode_gaps
from sparsecodec.mask import MaskCodec

DATA = Path(__file__).resolve().parent / "data"
FEDPM_SCORES = DATA / "fedpm_mlp_scores.npz"


# -- the FedPM profile ---------------------------------------------------------------------
def train_fedpm_scores(steps: int = 300, hidden: int = 200, seed: int = 0) -> np.ndarray:
    """Scores of a FedPM masked MLP 784-hidden-10 after ``steps`` Adam steps on MNIST."""
    import torch

    from fl.data import load_dataset

    try:
        data = load_dataset("mnist")
    except Exception:                     # no ../shared/data: the subset shipped with fl
        data = load_dataset("mnist-embedded")
    x = torch.as_tensor(np.asarray(data.x_train, np.float32).reshape(len(data.x_train), -1))
    y = torch.as_tensor(np.asarray(data.y_train, np.int64))
    gen = torch.Generator().manual_seed(seed)

    class Bern(torch.autograd.Function):
        @staticmethod
        def forward(ctx, theta):
            ctx.save_for_backward(theta)
            return torch.bernoulli(theta, generator=gen)

        @staticmethod
        def backward(ctx, grad):          # official FedPM STE: dL/dtheta := theta * dL/dm
            (theta,) = ctx.saved_tensors
            return theta * grad

    shapes = [(hidden, 784), (hidden,), (10, hidden), (10,)]
    fan_in = [784, 784, hidden, hidden]
    weights = [math.e * math.sqrt(1.0 / f) * (2.0 * torch.randint(0, 2, s, generator=gen) - 1.0)
               for s, f in zip(shapes, fan_in)]              # signed constant, frozen
    scores = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    opt = torch.optim.Adam(scores, lr=0.1)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,), generator=gen)
        w1, b1, w2, b2 = (w * Bern.apply(torch.sigmoid(s)) for w, s in zip(weights, scores))
        logits = torch.relu(x[batch] @ w1.T + b1) @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(logits, y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([s.detach().reshape(-1) for s in scores]).numpy()


def fedpm_theta() -> np.ndarray:
    """theta = sigmoid(scores) of the trained masked MLP (cached scores; trained if missing)."""
    if not FEDPM_SCORES.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FEDPM_SCORES, scores=train_fedpm_scores().astype(np.float16))
    scores = np.load(FEDPM_SCORES)["scores"].astype(np.float64)
    return 1.0 / (1.0 + np.exp(-scores))


# -- timing --------------------------------------------------------------------------------
def _best(fn, repeat: int) -> tuple[float, float, object]:
    """(best wall seconds, best thread-CPU seconds, last result)."""
    wall = cpu = math.inf
    result = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.thread_time()
        result = fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.thread_time() - c0)
    return wall, cpu, result


def _rate(n: int, seconds: float) -> float:
    return n / seconds / 1e6 if seconds > 0 else math.inf


def _constriction_row(mask: np.ndarray, probs: np.ndarray, repeat: int) -> dict:
    try:
        import constriction
    except ImportError:
        return {"ans": "skipped (constriction not installed)"}
    symbols = mask.astype(np.int32)
    model = constriction.stream.model.Bernoulli(perfect=False)

    def encode():
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, model, probs)
        return coder.get_compressed()

    encode()
    enc_wall, enc_cpu, words = _best(encode, repeat)
    dec_wall, dec_cpu, decoded = _best(
        lambda: constriction.stream.stack.AnsCoder(words).decode(model, probs), repeat)
    assert np.array_equal(decoded, symbols), "constriction round trip failed"
    n = mask.size
    return {"ans_bits": 32 * int(words.size), "ans_enc_mbit_s": _rate(n, enc_wall),
            "ans_dec_mbit_s": _rate(n, dec_wall), "ans_enc_mbit_s_cpu": _rate(n, enc_cpu),
            "ans_dec_mbit_s_cpu": _rate(n, dec_cpu)}


def _zstd_row(mask: np.ndarray, repeat: int) -> dict:
    n = mask.size
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    enc_wall, enc_cpu, blob = _best(lambda: cctx.compress(np.packbits(mask).tobytes()), repeat)
    dec_wall, dec_cpu, back = _best(
        lambda: np.unpackbits(np.frombuffer(dctx.decompress(blob), np.uint8), count=n), repeat)
    assert np.array_equal(back.astype(bool), mask)
    return {"zstd_bits": 8 * len(blob), "zstd_enc_mbit_s": _rate(n, enc_wall),
            "zstd_dec_mbit_s": _rate(n, dec_wall)}


def _profiles(n: int, rng: np.random.Generator):
    for p in (0.5, 0.1, 0.01, 1e-4):
        yield f"constant p={p:g}", p
    yield "Beta(0.5,0.5)", rng.beta(0.5, 0.5, n)
    yield "Beta(5,5)", rng.beta(5.0, 5.0, n)
    yield "near-det {0.01,0.99}", rng.choice(np.array([0.01, 0.99]), n)
    yield "FedPM MLP theta", fedpm_theta()


def bench_mask(n: int = 10**7, seed: int = 0, repeat: int = 3, timing: bool = True) -> list[dict]:
    """Rows of bits vs bound (every profile and model) and speeds (see module doc)."""
    rng = np.random.default_rng(seed)
    codec = MaskCodec()
    MaskCodec().decode(bytes(codec.encode(np.ones(64, bool), p=np.full(64, 0.3))),
                       p=np.full(64, 0.3))                             # JIT warm-up
    rows = []
    for name, p in _profiles(n, rng):
        size = n if np.ndim(p) == 0 else p.size
        mask = rng.random(size) < p
        models = [("adaptive", None)]
        models += [("fixed", p), ("per-entry", np.full(size, p))] if np.ndim(p) == 0 else \
            [("per-entry", p)]
        for model, side_p in models:
            side = {} if side_p is None else {"p": side_p}
            frame = codec.encode(mask, **side)
            bound = mask_bits(mask, side_p)
            coded = frame.sections.get("model", 0) + frame.sections["mask"]
            row = {"profile": name, "model": model, "n": size, "coded_bits": coded,
                   "frame_bits": frame.nbits, "bound_bits": bound,
                   "ratio": coded / bound if bound else math.inf,
                   "excess_bits": coded - bound,
                   "target_met": bool(coded <= 1.001 * bound + 64),
                   "bpp": coded / size,
                   "fedpm_ideal_bpp": binary_entropy(mask.mean()) + math.log2(size) / size}
            if timing and model != "adaptive":
                data = bytes(frame)
                enc_wall, enc_cpu, _ = _best(lambda: codec.encode(mask, **side), repeat)
                dec_wall, dec_cpu, got = _best(lambda: codec.decode(data, **side), repeat)
                assert np.array_equal(got, mask)
                row.update({"enc_mbit_s": _rate(size, enc_wall), "dec_mbit_s": _rate(size, dec_wall),
                            "enc_mbit_s_cpu": _rate(size, enc_cpu),
                            "dec_mbit_s_cpu": _rate(size, dec_cpu)})
                if model == "per-entry":
                    row.update(_constriction_row(mask, np.asarray(side_p, np.float64), repeat))
                    row.update(_zstd_row(mask, repeat))
            rows.append(row)
    return rows


def bench_entropy_index(n: int = 10**7, seed: int = 0, repeat: int = 3) -> list[dict]:
    """The range-coded index coders on iid supports: bits vs log2 C(n, k), speeds (CPU time).

    ``bitmap`` for densities 0.02..0.5 (its target: <= 1.001 log2 C(n, k) + 16 bits) and
    ``gaps`` for k = 100 and 1e4 (O(k log(n/k))); speeds are Mbit/s of the n-bit mask.
    """
    rng = np.random.default_rng(seed)
    encode_gaps(np.array([1]), 10)                                     # JIT warm-up
    decode_gaps(encode_gaps(np.array([1]), 10), 10, 1)
    decode_bitmap(encode_bitmap(np.array([1]), 10), 10, 1)
    cases = [("bitmap", int(n * d)) for d in (0.02, 0.1, 0.25, 0.5)]
    cases += [("gaps", 100), ("gaps", 10_000)]
    rows = []
    for coder, k in cases:
        idx = np.sort(rng.choice(n, k, replace=False))
        enc, dec = (encode_bitmap, decode_bitmap) if coder == "bitmap" else (encode_gaps, decode_gaps)
        _, enc_cpu, payload = _best(lambda: enc(idx, n), repeat)
        _, dec_cpu, got = _best(lambda: dec(payload, n, k), repeat)
        assert np.array_equal(got, idx)
        bound = topk_index_bits(n, k)
        bits = 8 * len(payload)
        rows.append({"coder": coder, "n": n, "k": k, "density": k / n, "bits": bits,
                     "bound_bits": bound, "excess_bits": bits - bound, "ratio": bits / bound,
                     "target_met": bool(bits <= 1.001 * bound + 16),
                     "enc_mbit_s_cpu": _rate(n, enc_cpu), "dec_mbit_s_cpu": _rate(n, dec_cpu),
                     "enc_us": 1e6 * enc_cpu, "dec_us": 1e6 * dec_cpu})
    return rows


COLUMNS = ["profile", "model", "n", "coded_bits", "bound_bits", "ratio", "excess_bits",
           "target_met", "frame_bits", "enc_mbit_s", "dec_mbit_s", "enc_mbit_s_cpu",
           "dec_mbit_s_cpu", "ans_enc_mbit_s", "ans_dec_mbit_s", "zstd_bits", "zstd_enc_mbit_s",
           "zstd_dec_mbit_s"]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = bench_mask(n=args.n, seed=args.seed)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    print(" | ".join(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.6g}" if isinstance(v, float) else str(v))
        print(" | ".join(cells))
    ans = [r for r in rows if "ans_dec_mbit_s" in r]
    for r in ans:
        print(f"{r['profile']}: ours/ANS encode x{r['enc_mbit_s'] / r['ans_enc_mbit_s']:.1f}, "
              f"decode x{r['dec_mbit_s'] / r['ans_dec_mbit_s']:.1f} (wall); CPU time: encode "
              f"x{r['enc_mbit_s_cpu'] / r['ans_enc_mbit_s_cpu']:.1f}, "
              f"decode x{r['dec_mbit_s_cpu'] / r['ans_dec_mbit_s_cpu']:.1f}")
    print()
    index_rows = bench_entropy_index(n=args.n, seed=args.seed)
    cols = list(index_rows[0])
    print(" | ".join(cols))
    for r in index_rows:
        print(" | ".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


if __name__ == "__main__":
    main()
