"""Benchmark runner: ``python -m benchmarks codecs [--quick] [--out DIR]``.

Every figure is measured in this one run beside its baseline, single-threaded, after JIT
warm-up. Results are printed as tables and written as JSON (``benchmarks/results/``).

Subcommands:
  codecs   top-k selection, index coding (bits vs bound, iid and structured supports,
           decode speed), whole TopK.encode time and peak memory
  masks    the entropy-coded mask codec against constriction and zstd(packbits)
  all      both
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        return
    if columns is None:   # the union of the rows' scalar fields, in first-seen order
        columns = list(dict.fromkeys(c for r in rows for c, v in r.items()
                                     if not isinstance(v, (dict, list))))
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    sys.stdout.flush()


def run_codecs(quick: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    from .indices_bench import bench_index_decode, bench_indices
    from .select_bench import bench_select
    from .topk_bench import bench_topk_encode, bench_topk_memory

    n = 10**6 if quick else 10**7
    out: dict = {}
    out["select"] = bench_select(n=n)
    print_table(f"Top-k selection (n={n:.0e}, density 1e-3, 1 thread)", out["select"])
    out["topk_encode"] = bench_topk_encode(n=n)
    print_table("Whole TopK.encode vs one pass (x.sum())", out["topk_encode"])
    out["topk_memory"] = bench_topk_memory(n=n) + bench_topk_memory(n=n, density=0.1)
    print_table("TopK.encode peak extra memory (VmHWM growth after a clear_refs reset, fresh process)", out["topk_memory"])
    ns = (10**5, 10**6) if quick else (10**5, 10**6, 10**7)
    out["index_bits"] = bench_indices(ns=ns)
    print_table("Index bits vs log2 C(n,k) (iid and structured supports)", out["index_bits"])
    out["index_decode"] = bench_index_decode(n=n)
    print_table(f"Index encode/decode speed (n={n:.0e}, density 1e-3)", out["index_decode"])
    return out


def run_masks(quick: bool) -> dict:
    from .mask_bench import bench_mask

    rows = bench_mask(n=10**6 if quick else 10**7, repeat=5)   # best of 5: the 2-core box is noisy
    print_table("Mask codec: bits vs cross-entropy and throughput", rows)
    return {"mask": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["codecs", "masks", "all"])
    ap.add_argument("--quick", action="store_true", help="smaller n (a smoke run, not the reported figures)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON results")
    args = ap.parse_args(argv)
    meta = {"command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import numba
        import numpy
        import torch

        meta.update(numpy=numpy.__version__, numba=numba.__version__, torch=torch.__version__)
    except ImportError:
        pass
    results: dict = {"meta": meta}
    if args.what in ("codecs", "all"):
        results.update(run_codecs(args.quick))
    if args.what in ("masks", "all"):
        results.update(run_masks(args.quick))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.what}{'-quick' if args.quick else ''}.json"
    (args.out / name).write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
