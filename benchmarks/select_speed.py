"""Top-k selection and ``TopK.encode`` time over one read pass, on iid and clustered inputs.

Issue 18's acceptance asks ``TopK.encode`` at n = 1e7 float32 to cost at most 2.5x one read
pass (``x.sum()``) at densities 1e-4 and 1e-3 on normal *and clustered* input, and at most
8x at density 0.1. Every ratio here is a time divided by ``x.sum()`` on the same array,
measured in the same process, best of ``repeats`` (the machine is shared: the best run is
the one least disturbed), after a JIT warm-up call::

    python -m benchmarks.select_speed            # n = 1e7, all inputs and densities
    python -m benchmarks.select_speed --n 1000000 --repeats 3
    python -m benchmarks.select_speed --clock cpu   # this thread's CPU time, not wall time
    python -m benchmarks.select_speed --out benchmarks/results/select_speed   # also as files

On a loaded machine (more runnable processes than cores) a 20 ms call is rarely left
alone for its whole length while a 2 ms ``x.sum()`` often is, so wall-clock ratios are
biased against the longer call; ``--clock cpu`` (``time.thread_time``) leaves out the time
the thread was not running, though not the memory bandwidth other processes take.

The inputs (:func:`make_input`, seeded; all float32):

* ``normal``: iid standard normal;
* ``hot_rows``: a (rows, 1000) layer gradient, N(0, 1) everywhere, whose 8 bands of
  contiguous rows (1 % of the rows in all, at seeded positions) are 100x larger: the
  top 1e-4 and 1e-3 all sit in 1 % of the array, in a few contiguous blocks;
* ``sorted_runs``: heavy-tailed magnitudes (Student t, 2 degrees of freedom, random
  signs) sorted ascending by magnitude within runs of 65536: the largest values of every
  run are contiguous at its end, and the run maxima vary over orders of magnitude.

    >>> rows = bench_select_speed(n=200_000, densities=(1e-3,), inputs=("hot_rows",),
    ...                           repeats=1, coders=("golomb",))
    >>> [(r["input"], r["density"], sorted(r["encode_ratio"])) for r in rows]
    [('hot_rows', 0.001, ['golomb'])]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["INPUTS", "TARGETS", "make_input", "bench_select_speed", "report"]

INPUTS = ("normal", "hot_rows", "sorted_runs")


def make_input(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """The float32 input ``name`` of ``n`` elements (see the module docstring)."""
    if name == "normal":
        return rng.standard_normal(n, dtype=np.float32)
    if name == "hot_rows":
        cols = 1000
        rows = -(-n // cols)
        x = rng.standard_normal(rows * cols, dtype=np.float32).reshape(rows, cols)
        bands, hot = 8, max(8, rows // 100)
        starts = np.sort(rng.choice(rows - hot // bands, bands, replace=False))
        for s in starts:
            x[s:s + hot // bands] *= 100.0
        return x.reshape(-1)[:n].copy()
    if name == "sorted_runs":
        run = 1 << 16
        mag = np.abs(rng.standard_t(2, n)).astype(np.float32)
        for s in range(0, n, run):
            mag[s:s + run].sort()
        return np.where(rng.random(n) < 0.5, -mag, mag).astype(np.float32)
    raise KeyError(name)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _best(f, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        f()
        best = min(best, clock() - t)
    return best


def bench_select_speed(n: int = 10**7, densities=(1e-4, 1e-3, 1e-2, 0.1), inputs=INPUTS,
                       repeats: int = 7, seed: int = 0, coders=("golomb", "auto"),
                       clock: str = "wall") -> list[dict]:
    """One row per (input, density): ``select_ratio`` (``topk_indices``) and
    ``encode_ratio[coder]`` (``TopK(density, index=coder).encode``) over ``x.sum()``,
    timed with ``CLOCKS[clock]``."""
    import sparsecodec as sc
    from sparsecodec.inspect import inspect_frame

    rows = []
    for name in inputs:
        x = make_input(name, n, np.random.default_rng(seed))
        x.sum()
        for density in densities:
            k = sc.k_for(n, density=density)
            sc.topk_indices(x, k)                          # JIT warm-up
            codecs = {c: sc.TopK(density=density, index=c) for c in coders}
            frames = {c: codec.encode(x) for c, codec in codecs.items()}
            # what each encode wrote: the index coder (auto's pick) and the index bits
            picked = {c: inspect_frame(f).tensors[0].index_coder for c, f in frames.items()}
            index_bits = {c: int(f.sections["index"]) for c, f in frames.items()}
            del frames
            # interleave the timings so that a burst of load on the shared machine hits
            # the reference pass as much as the code measured against it
            one = sel = float("inf")
            enc = {c: float("inf") for c in coders}
            tick = CLOCKS[clock]
            for _ in range(repeats):
                one = min(one, _best(x.sum, 1, tick))
                sel = min(sel, _best(lambda: sc.topk_indices(x, k), 1, tick))
                for c, codec in codecs.items():
                    enc[c] = min(enc[c], _best(lambda: codec.encode(x), 1, tick))
            rows.append({"input": name, "density": density, "n": n, "k": k,
                         "sum_ms": 1e3 * one, "select_ms": 1e3 * sel,
                         "select_ratio": sel / one,
                         "encode_ms": {c: 1e3 * t for c, t in enc.items()},
                         "encode_ratio": {c: t / one for c, t in enc.items()},
                         "index_coder": picked, "index_bits": index_bits,
                         "bound_bits": sc.bounds.topk_index_bits(n, k)})
    # A pass timed right after a large encode runs up to ~15 % slower than one timed alone
    # (measured), which flatters the ratios of the large encodes: each row also gets its
    # ratio to the fastest pass of its input over the whole run.
    for name in inputs:
        fastest = min(r["sum_ms"] for r in rows if r["input"] == name)
        for r in rows:
            if r["input"] == name:
                r["fastest_sum_ms"] = fastest
                r["encode_ratio_fastest"] = {c: t / fastest for c, t in r["encode_ms"].items()}
    return rows



#: issue 18's targets: encode / x.sum() at most this, per density
TARGETS = {1e-4: 2.5, 1e-3: 2.5, 0.1: 8.0}


def report(rows: list[dict], coders, header: str) -> str:
    """The markdown table of ``rows``, and one line per target of :data:`TARGETS`."""
    lines = [header, "",
             "Each encode / pass is given twice: against the pass timed next to it (best of the "
             "interleaved repeats), and, in brackets, against the fastest pass of that input in "
             "the whole run (a pass timed right after a large encode runs up to ~15 % slower). "
             "The targets are judged on the second, the stricter.", "",
             "| input | density | k | x.sum() ms | select / pass | "
             + " | ".join(f"encode {c} / pass" for c in coders) + " | auto's coder | index bits (auto) | / log2 C(n, k) |",
             "|---|---|---|---|---|" + "---|" * len(coders) + "---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['density']:g} | {r['k']} | {r['sum_ms']:.2f} | "
                     f"{r['select_ratio']:.2f} | "
                     + " | ".join(f"{r['encode_ratio'][c]:.2f} ({r['encode_ratio_fastest'][c]:.2f})"
                                  for c in coders)
                     + f" | {r['index_coder'].get('auto', '-')} | {r['index_bits'].get('auto', 0):,} | "
                     f"{r['index_bits'].get('auto', 0) / max(r['bound_bits'], 1e-9):.4f} |")
    lines += ["", "Targets (issue 18): encode / one pass at most "
              + ", ".join(f"{t:g}x at density {d:g}" for d, t in TARGETS.items()) + ".", ""]
    for r in rows:
        target = TARGETS.get(r["density"])
        if target is None:
            continue
        for c in coders:
            got = r["encode_ratio_fastest"][c]
            lines.append(f"- {r['input']}, density {r['density']:g}, `index={c!r}` "
                         f"({r['index_coder'][c]}, {r['index_bits'][c]:,} index bits): {got:.2f}x "
                         f"{'<=' if got <= target else '>'} {target:g}x: "
                         f"{'met' if got <= target else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10**7)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inputs", nargs="*", default=list(INPUTS))
    p.add_argument("--densities", nargs="*", type=float, default=[1e-4, 1e-3, 1e-2, 0.1])
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--out", help="folder for select_speed.md and select_speed.json (the rows, "
                                 "the command, the date and the load)")
    a = p.parse_args(argv)
    coders = ("golomb", "auto")
    header = (f"n = {a.n}, best of {a.repeats}, {a.clock} clock; ratios are time / x.sum() time, "
              f"same process; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(header)
    print(f"{'input':12s} {'density':>8s} {'sum ms':>7s} {'select ms':>9s} {'select x':>8s} "
          + " ".join(f"{'encode ' + c + ' x':>15s}" for c in coders))
    rows = []
    for r in bench_select_speed(a.n, tuple(a.densities), tuple(a.inputs), a.repeats,
                                coders=coders, clock=a.clock):
        rows.append(r)
        print(f"{r['input']:12s} {r['density']:8g} {r['sum_ms']:7.2f} {r['select_ms']:9.2f} "
              f"{r['select_ratio']:8.2f} "
              + " ".join(f"{r['encode_ratio'][c]:15.2f}" for c in coders), flush=True)
    if a.out:
        import json
        import sys
        from datetime import datetime, timezone
        from pathlib import Path

        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        command = "python -m benchmarks.select_speed " + " ".join(sys.argv[1:] if argv is None else argv)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = report(rows, coders, f"`{command}` ({when})\n\n{header}")
        (out / "select_speed.md").write_text(text)
        (out / "select_speed.json").write_text(json.dumps(
            {"command": command, "date": when, "load_average": os.getloadavg()[0], "rows": rows},
            indent=1) + "\n")
        print(f"wrote {out / 'select_speed.md'} and {out / 'select_speed.json'}")


if __name__ == "__main__":
    main()
