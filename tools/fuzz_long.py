"""A long fuzz of every decoder entry point, in child processes that may crash, hang or bloat.

Run by hand (the tests run it with a tiny ``--count``)::

    nice -n 10 .venv/bin/python tools/fuzz_long.py --count 1000000 --workers 1 --seed 0

Input ``i`` is seed ``i % len(corpus)`` (valid frames of every codec: TopK with each index and
value coder, Dense raw/zstd per dtype, MaskCodec per model, bundles, schema bundles, compact
messages, node states, checkpoints; with and without checksums) mutated by 1-3 operations
drawn from ``random.Random(seed, i)``, so a run is deterministic and any input is replayed
with ``--replay i``. Workers (``multiprocessing``, forked by default) decode under ``RLIMIT_AS`` = their
size after setup plus ``--as-margin-mib``; the parent watches a shared heartbeat and kills a
worker stuck on one input for ``--timeout`` seconds. Counted per target:

* crashes (the worker died), hangs (killed after the timeout, then run again alone in a fresh
  child for ``--confirm-timeout`` seconds: still running is a hang, finished is a "slow" input,
  e.g. a worker starved of CPU by other processes; the event gives the worker's CPU seconds
  spent on the input, from /proc, and the times alone);
* exceptions outside the documented ones (:class:`sparsecodec.SparseCodecError` subclasses;
  ``MemoryError`` under the address-space limit lands here), with reproducers;
* memory: tracemalloc's peak on every ``--trace-every``-th pass over the corpus against twice
  the caller's limit (``max_numel`` x the largest itemsize), and each worker's ``ru_maxrss`` growth;
* silent changes: a mutated input of a checksummed seed (CRC-32 frames, SHA-256 checkpoints)
  that decodes to something other than the original.

Results: ``<out>/fuzz_seed<seed>_n<count>.json`` and ``.md``.

This module is the parent: the run loop (handing out chunks, watching heartbeats, confirming
hangs), the report, ``--replay`` and the CLI. The corpus and the mutation are in
``fuzz_corpus.py``, what runs in the child processes in ``fuzz_worker.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MAX_EVENTS = 40            # reproducers kept per kind
CHUNK = 1000

if __package__:                    # imported as tools.fuzz_long
    from .fuzz_corpus import _OPS, _TINY_EC, _sim_state, _states, _tiny_sim, _uplinks  # noqa: F401
    from .fuzz_corpus import build_corpus, mutate
    from .fuzz_worker import ClientDropped, _client_dropped, _injected, _vm_size  # noqa: F401
    from .fuzz_worker import (Runner, _confirm_child, _event, _new_stats, fingerprint, shape_of,
                              worker_main)
else:                              # run as a script, or imported with tools/ on sys.path (the tests)
    from fuzz_corpus import _OPS, _TINY_EC, _sim_state, _states, _tiny_sim, _uplinks  # noqa: F401
    from fuzz_corpus import build_corpus, mutate
    from fuzz_worker import ClientDropped, _client_dropped, _injected, _vm_size  # noqa: F401
    from fuzz_worker import (Runner, _confirm_child, _event, _new_stats, fingerprint, shape_of,
                             worker_main)


# -- the parent ------------------------------------------------------------------------------------
class Worker:
    def __init__(self, ctx, args, corpus_path: str) -> None:
        # the heartbeat: input in progress, its start (monotonic, 0: none) and CPU time at start
        self.cur, self.t0 = ctx.Value("q", -1, lock=False), ctx.Value("d", 0.0, lock=False)
        self.c0 = ctx.Value("d", 0.0, lock=False)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, daemon=True,
                                args=(child, corpus_path, args.seed, args.max_numel, args.trace_every,
                                      args.as_margin_mib << 20, self.cur, self.t0, self.c0, args.inject))
        self.proc.start()
        child.close()
        self.task: tuple | None = None

    def give(self, task: tuple) -> None:
        self.task = task
        self.conn.send(task)

    def cpu_time(self) -> tuple[float, str]:
        """The worker's CPU seconds so far (user + system) and its scheduler state (R running,
        S sleeping, D waiting on I/O), from /proc: they tell a stalled worker from a spinning one."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), fields[0]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()


def _confirm(ctx, corpus: list[dict], args, i: int) -> tuple[str, str]:
    """Run a timed-out input again, alone: ("hang", why) or ("slow", the two run times)."""
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_confirm_child, args=(child, corpus, args, i), daemon=True)
    proc.start()
    child.close()
    got = conn.poll(args.confirm_timeout)
    result = conn.recv() if got else None
    proc.kill()
    proc.join()
    if result is None:
        return "hang", f"alone in a fresh child, no result after {args.confirm_timeout} s either"
    (first, second), outcome = result
    return "slow", f"alone: {first:.3f} s then {second:.3f} s, {outcome}"


def _merge(total: dict, stats: dict) -> None:
    for target, st in stats.items():
        t = total.setdefault(target, _new_stats())
        for k, v in st.items():
            if isinstance(v, dict):
                for name, n in v.items():
                    t[k][name] = t[k].get(name, 0) + n
            elif k == "peak_traced_bytes":
                t[k] = max(t[k], v)
            else:
                t[k] += v


def run_fuzz(args) -> dict:
    import torch

    torch.set_num_threads(1)         # no intra-op thread pool in the parent the workers fork from
    corpus = build_corpus(args.seed, quick=args.quick_corpus)
    with tempfile.TemporaryDirectory(prefix="fuzz-ref-") as d:
        run = Runner(args.max_numel, d)
        refs = [(fingerprint(out), shape_of(out)) for out in (run(s, s["data"]) for s in corpus)]
    fd, corpus_path = tempfile.mkstemp(suffix=".pkl")
    with os.fdopen(fd, "wb") as f:
        pickle.dump((corpus, refs), f)
    ctx = mp.get_context(args.start_method)
    pending = [(a, min(a + CHUNK, args.count), frozenset()) for a in range(0, args.count, CHUNK)][::-1]
    workers = [Worker(ctx, args, corpus_path) for _ in range(min(args.workers, len(pending)))]
    totals: dict[str, dict] = {}
    events: list[dict] = []
    rss_growth, done, start, last = 0, 0, time.monotonic(), 0.0

    def lost(w: Worker, kind: str, what: str) -> Worker:
        i = w.cur.value
        if i < 0:
            raise RuntimeError(f"a fuzz worker failed during its setup ({what})")
        j, data, _ = mutate(corpus, args.seed, i)
        if kind == "hang":
            kind, alone = _confirm(ctx, corpus, args, i)
            what = f"{what}; {alone}"
        t = totals.setdefault(corpus[j]["target"], _new_stats())
        t[{"crash": "crashes", "hang": "hangs", "slow": "slow"}[kind]] += 1
        t["inputs"] += 1
        events.append(_event(kind, corpus[j], i, data, what))
        a, b, skip = w.task
        pending.append((a, b, skip | {i}))
        return Worker(ctx, args, corpus_path)

    try:
        while pending or any(w.task for w in workers):
            for k, w in enumerate(workers):
                if w.task is None and pending:
                    w.give(pending.pop())
            ready = wait([w.conn for w in workers if w.task], timeout=0.05)
            for k, w in enumerate(workers):
                if w.task is None:
                    continue
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except EOFError:
                        msg = None
                    if msg is not None:
                        _merge(totals, msg["stats"])
                        events.extend(msg["events"])
                        rss_growth = max(rss_growth, msg["rss_growth"])
                        done += w.task[1] - w.task[0] - len(w.task[2])
                        w.task = None
                        continue
                if not w.proc.is_alive():
                    w.proc.join()
                    workers[k] = lost(w, "crash", f"worker died, exit code {w.proc.exitcode}")
                elif w.t0.value and time.monotonic() - w.t0.value > args.timeout:
                    cpu, state = w.cpu_time()
                    cpu = max(0.0, cpu - w.c0.value)       # /proc counts in 10 ms ticks
                    w.kill()
                    workers[k] = lost(w, "hang", f"no result after {args.timeout} s "
                                                 f"({cpu:.2f} s of CPU, state {state})")
            now = time.monotonic()
            if args.max_minutes and now - start > 60 * args.max_minutes and pending:
                print(f"fuzz: --max-minutes {args.max_minutes} reached, finishing the running chunks",
                      file=sys.stderr, flush=True)
                pending.clear()
            if now - last > args.progress_every:
                last = now
                rate = done / max(now - start, 1e-9)
                bad = {k: sum(sum(t[k].values()) if isinstance(t[k], dict) else t[k] for t in totals.values())
                       for k in ("crashes", "hangs", "slow", "other", "silent_changes", "over_memory_limit")}
                eta = (args.count - done) / max(rate, 1e-9) / 60
                print(f"fuzz {done}/{args.count} ({100 * done / args.count:.1f} %) {rate:.0f}/s "
                      + " ".join(f"{k} {v}" for k, v in bad.items()) + f" eta {eta:.1f} min",
                      file=sys.stderr, flush=True)
    finally:
        for w in workers:
            if w.proc.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
                w.proc.join(timeout=5)
                if w.proc.is_alive():
                    w.kill()
        os.unlink(corpus_path)
    elapsed = time.monotonic() - start
    args.requested, args.count = args.count, done + sum(t["crashes"] + t["hangs"] + t["slow"]
                                              for t in totals.values())
    return _report(args, corpus, totals, events, elapsed, rss_growth)


def _report(args, corpus, totals, events, elapsed, rss_growth) -> dict:
    import numpy as np

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except OSError:
            return "?"

    keys = ("inputs", "ok", "crashes", "hangs", "slow", "silent_changes", "over_memory_limit")
    summary = {k: sum(t[k] for t in totals.values()) for k in keys}
    summary["other_exceptions"] = sum(sum(t["other"].values()) for t in totals.values())
    kept: dict[str, int] = {}
    first = []
    for e in sorted(events, key=lambda e: e["input"]):
        kept[e["kind"]] = kept.get(e["kind"], 0) + 1
        if kept[e["kind"]] <= MAX_EVENTS:
            first.append(e)
    events = first
    flags = f" --max-numel {args.max_numel}" + (" --quick-corpus" if args.quick_corpus else "")
    for e in events:
        e["replay"] = f"python tools/fuzz_long.py --seed {args.seed}{flags} --replay {e['input']}"
    return {"command": " ".join([Path(sys.executable).name, "tools/fuzz_long.py"] + sys.argv[1:]),
            "seed": args.seed, "count": args.count, "count_requested": args.requested,
            "workers": args.workers, "max_numel": args.max_numel,
            "timeout_s": args.timeout, "trace_every": args.trace_every, "as_margin_mib": args.as_margin_mib,
            "quick_corpus": args.quick_corpus, "elapsed_s": round(elapsed, 1),
            "inputs_per_s": round(args.count / max(elapsed, 1e-9), 1),
            "git": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--",
                                                                        "sparsecodec", "fl") else ""),
            "machine": {"python": platform.python_version(), "numpy": np.__version__,
                        "cpu": platform.processor() or platform.machine(), "nice": os.nice(0)},
            "corpus": [{"target": s["target"], "name": s["name"], "bytes": len(s["data"]), "crc": s["crc"]}
                       for s in corpus],
            "summary": summary, "worker_rss_growth_bytes": rss_growth, "targets": totals, "events": events}


def write_results(res: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"fuzz_seed{res['seed']}_n{res['count']}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    s = res["summary"]
    lines = [f"# Long fuzz: {res['count']:,} mutated inputs, seed {res['seed']}", "",
             f"`{res['command']}` at {res['git']}: {res['elapsed_s']} s, {res['inputs_per_s']} inputs/s "
             f"({res['workers']} worker(s), nice {res['machine']['nice']}), max_numel={res['max_numel']}, "
             f"timeout {res['timeout_s']} s, RLIMIT_AS = size after setup + {res['as_margin_mib']} MiB, "
             f"tracemalloc on every input of every {res['trace_every']}th pass over the corpus.", "",
             f"**crashes {s['crashes']}, hangs {s['hangs']}, exceptions outside SparseCodecError "
             f"{s['other_exceptions']}, silent changes {s['silent_changes']}, traced peaks over 2x the "
             f"limit {s['over_memory_limit']}**; slow inputs (over the timeout, finished when run again "
             f"alone) {s['slow']}; worker ru_maxrss growth after setup "
             f"{res['worker_rss_growth_bytes'] / 2**20:.1f} MiB.", "",
             "| target | inputs | decoded | documented errors | other | crash | hang | slow | silent | "
             "traced peak (KiB) | no-CRC 1-flip shape changes |", "|---" * 11 + "|"]
    for name, t in sorted(res["targets"].items()):
        doc = ", ".join(f"{k} {v}" for k, v in sorted(t["documented"].items(), key=lambda kv: -kv[1]))
        other = ", ".join(f"{k} {v}" for k, v in t["other"].items()) or "0"
        lines.append(f"| {name} | {t['inputs']} | {t['ok']} | {doc} | {other} | {t['crashes']} "
                     f"| {t['hangs']} | {t['slow']} | {t['silent_changes']} "
                     f"| {t['peak_traced_bytes'] / 1024:.0f} "
                     f"| {t['nocrc_single_flip_shape_changes']} |")
    names = ", ".join(c["name"] for c in res["corpus"])
    lines += ["", f"Corpus: {len(res['corpus'])} seeds ({names}).",
              "", "## Findings (first of each kind; replay with the command shown)", ""]
    lines += [f"- {e['kind']} in {e['target']} ({e['seed_name']}), input {e['input']}: {e['what']} "
              f"(`{e['replay']}`)" for e in res["events"]] or ["- none"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def replay(args) -> None:
    corpus = build_corpus(args.seed, quick=args.quick_corpus)
    j, data, _ = mutate(corpus, args.seed, args.replay)
    print(f"input {args.replay}: seed {corpus[j]['name']} ({corpus[j]['target']}), {len(data)} bytes:")
    print(base64.b64encode(data).decode())
    with tempfile.TemporaryDirectory() as d:
        print(Runner(args.max_numel, d)(corpus[j], data))      # raises what it raises


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-numel", type=int, default=1 << 18)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per input before a hang")
    p.add_argument("--confirm-timeout", type=float, default=120.0,
                   help="seconds a timed-out input gets alone in a fresh child before it is a hang")
    p.add_argument("--trace-every", type=int, default=16,
                   help="tracemalloc on every Nth pass over the corpus (0: never)")
    p.add_argument("--as-margin-mib", type=int, default=512, help="RLIMIT_AS above the worker's size")
    p.add_argument("--progress-every", type=float, default=30.0)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop handing out inputs after this long (0: run all --count)")
    p.add_argument("--start-method", default="fork", choices=("fork", "spawn", "forkserver"),
                   help="fork: workers start in milliseconds from the parent's imports")
    p.add_argument("--quick-corpus", action="store_true", help="a hand-built checkpoint, no Simulation")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz")
    p.add_argument("--replay", type=int, default=None, help="run input N here and show its outcome")
    p.add_argument("--inject", action="append", default=[], metavar="KIND:N",
                   help="tests only: at input N, crash|hang|slow|other|memory instead of decoding")
    args = p.parse_args(argv)
    args.inject = {int(n): k for k, n in (x.split(":") for x in args.inject)}
    if args.replay is not None:
        return replay(args)
    res = run_fuzz(args)
    stem = write_results(res, args.out)
    print(json.dumps(res["summary"]), f"-> {stem}.json/.md")


if __name__ == "__main__":
    main()
