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
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import pickle
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MAX_EVENTS = 40            # reproducers kept per kind
CHUNK = 1000


# -- the corpus ------------------------------------------------------------------------------------
def _sim_state(quick: bool) -> dict:
    """A real ``Simulation.state_dict()`` after one round (``quick``: a hand-built look-alike)."""
    import numpy as np

    from fl.algorithms.base import ServerState
    from fl.algorithms.ec import ECClientState

    if quick:
        import sparsecodec as sc

        ef = ECClientState()
        ef.feedback.step("w", np.linspace(-1, 1, 12, dtype=np.float32), sc.TopK(k=3))
        return {"format": 1, "rounds_done": 1, "server": ServerState({"w": np.ones(12, np.float32)}),
                "client_states": {0: ef, 1: ECClientState()}, "client_generators": [bytes(range(40))],
                "sample_rng": np.random.default_rng(0).bit_generator.state,
                "metrics": [{"round": 1, "accuracy": 0.5, "train_loss": None}], "ledger": []}
    from fl.config import resolve_config
    from fl.simulation import Simulation

    sets = ["dataset=synthetic-logistic", "data.n_train=60", "data.n_test=20", "data.dim=4",
            "data.num_classes=2", "model=logistic-regression", "model_options.in_features=4",
            "model_options.num_classes=2", "model_options.init=torch_default", "rounds=1",
            "sim.clients=3", "sim.clients_per_round=2", "sim.checkpoint_every=0", "algo.batch_size=8",
            "algo.ec.density=0.3"]
    sim = Simulation(resolve_config(algorithm="ec", sets=sets))
    sim.run()
    return sim.state_dict()


_TINY_EC = ["dataset=synthetic-logistic", "data.n_train=60", "data.n_test=20", "data.dim=4",
            "data.num_classes=2", "model=logistic-regression", "model_options.in_features=4",
            "model_options.num_classes=2", "model_options.init=torch_default", "rounds=1",
            "sim.clients=3", "sim.clients_per_round=2", "sim.checkpoint_every=0", "algo.batch_size=8",
            "algo.ec.density=0.3"]


def _tiny_sim():
    from fl.config import resolve_config
    from fl.simulation import Simulation

    return Simulation(resolve_config(algorithm="ec", sets=_TINY_EC))


def _uplinks() -> list[tuple[int, bytes, Any]]:
    """Round 1's uplink messages of a tiny EC run (compact wire) and the server's spec."""
    from fl.channel import Channel

    seen = []
    sim = _tiny_sim()
    sim.channel = Channel(tap=lambda m, c: seen.append(m))
    sim.step()
    return [(m.client, m.data, sim._round_spec) for m in seen if m.direction == "up"]


def _client_dropped():
    from sparsecodec.errors import SparseCodecError

    class ClientDropped(SparseCodecError):
        """The server's receive path dropped the client: the documented outcome of hostile bytes
        (anything it raises instead is an aborted server round, counted under "other")."""
    return ClientDropped


ClientDropped = _client_dropped()


def build_corpus(seed: int, quick: bool = False) -> list[dict]:
    """Valid inputs of every target: ``{"target", "name", "data", "kwargs", "crc"}``."""
    import numpy as np

    import sparsecodec as sc
    from fl.checkpoint import save_checkpoint
    from fl.flower.state import encode_state
    from sparsecodec.indices import INDEX_CODERS
    from sparsecodec.values import VALUE_CODERS

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, 13)).astype(np.float32)
    mask = rng.random((5, 17)) < 0.3
    probs = np.clip(rng.random(mask.size), 0.05, 0.95)
    out: list[dict] = []

    def add(target: str, name: str, data, crc: bool, **kwargs: Any) -> None:
        out.append({"target": target, "name": name, "data": bytes(data), "crc": crc, "kwargs": kwargs})

    for crc in (False, True):
        tag = "crc" if crc else "nocrc"
        for index in INDEX_CODERS:
            for values in VALUE_CODERS:
                add("decode", f"topk-{index}-{values}-{tag}",
                    sc.TopK(k=20, index=index, values=values, checksum=crc).encode(x), crc)
        sparse = np.where(mask, 1.5, 0).astype(np.float32)
        add("decode", f"topk-nnz-{tag}", sc.TopK(k="nnz", checksum=crc).encode(sparse), crc)
        for comp in (None, "zstd"):
            for dt in (np.float32, np.float64, np.float16):
                add("decode", f"dense-{comp or 'raw'}-{np.dtype(dt).name}-{tag}",
                    sc.Dense(compression=comp, checksum=crc).encode(x.astype(dt)), crc)
        mc = sc.MaskCodec(checksum=crc)
        add("decode", f"mask-adaptive-bool-{tag}", mc.encode(mask), crc)
        add("decode", f"mask-adaptive-uint8-{tag}", mc.encode(mask.astype(np.uint8)), crc)
        add("decode", f"mask-fixed-{tag}", mc.encode(mask, p=0.3), crc)
        add("decode", f"mask-per-entry-{tag}", mc.encode(mask, p=probs.reshape(mask.shape)), crc,
            p=probs.reshape(mask.shape))
        tensors = {"w": x, "b": x[0].copy(), "m": mask}
        codecs = {"w": sc.TopK(k=10), "b": sc.Dense(compression="zstd"), "m": sc.MaskCodec()}
        add("bundle", f"bundle-mixed-{tag}", sc.encode_bundle(tensors, codecs, checksum=crc), crc)
        add("bundle", f"bundle-global-topk-{tag}",
            sc.encode_bundle({"w": x, "b": x[0].copy()}, sc.TopK(k=12), scope="global", checksum=crc), crc)
        side = {"m": {"p": probs.reshape(mask.shape)}}
        add("bundle", f"bundle-mask-side-{tag}", sc.encode_bundle(tensors, codecs, side=side, checksum=crc),
            crc, side=side)
        schema = sc.Schema.from_tensors(tensors)
        add("bundle", f"schema-bundle-{tag}", sc.encode_bundle(tensors, codecs, schema=schema, checksum=crc),
            crc, schema=schema)
        add("decode", f"generic-decode-schema-bundle-{tag}",
            sc.encode_bundle(tensors, codecs, schema=schema, checksum=crc), crc, schema=schema)
        try:
            spec = sc.MessageSpec(sc.Schema.from_tensors({"w": x, "b": x[0].copy()}), sc.TopK.flare(R=0.5))
            add("packed", f"packed-flare-{tag}",
                sc.encode_packed({"w": x, "b": x[0].copy()}, spec, checksum=crc), crc, spec=spec)
        except (AttributeError, ImportError):    # compact messages not in this checkout
            pass
    try:                                       # issue 15's patches and the server's receive path
        from sparsecodec.patch import changed_positions, encode_patch

        old = {"w": x, "b": x[0].copy()}
        new = {"w": x.copy(), "b": x[0].copy()}
        new["w"].reshape(-1)[rng.choice(x.size, 9, replace=False)] += 1
        pschema = sc.Schema.from_tensors(old)
        for crc in (False, True):
            add("patch", f"patch-{'crc' if crc else 'nocrc'}",
                encode_patch(new, {n: changed_positions(old[n], new[n]) for n in old}, pschema,
                             base=3, version=4, checksum=crc), crc, schema=pschema, old=old)
        for cid, data, spec in _uplinks():
            add("server_receive", f"server-receive-client{cid}", data, True, client=cid, spec=spec)
    except ImportError:
        pass
    state = _sim_state(quick)
    for name, s in _states(rng).items():
        add("state", f"state-{name}", encode_state(s), False)
    add("state", "state-simulation", encode_state(state), False)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(Path(d) / "c.ckpt", state)
        ckpt = (Path(d) / "c.ckpt").read_bytes()
    add("checkpoint", "checkpoint-simulation", ckpt, True)
    add("checkpoint_resigned", "checkpoint-resigned-payload", encode_state(state), False)
    return out


def _states(rng) -> dict[str, Any]:
    import numpy as np
    import torch

    import sparsecodec as sc
    from fl.algorithms.ec import ECClientState
    from fl.algorithms.ef21 import EF21ServerState
    from fl.algorithms.fedpm import FedPMClientState
    from fl.algorithms.proxskip import ProxSkipClientState

    ec = ECClientState()
    ec.feedback.step("w", rng.standard_normal(9).astype(np.float32), sc.TopK(k=2))
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3, 2)
    opt.step()
    p = {"w": rng.standard_normal((2, 3)).astype(np.float32)}
    return {"ec": ec, "fedpm-adam": FedPMClientState(opt.state_dict()),
            "ef21-server": EF21ServerState(p, {1: p}),
            "proxskip": ProxSkipClientState(p["w"].ravel(), None, 3),
            "plain": {0: (1, 2.5, None, b"\x01"), "lr": [0.1, True], "a": np.arange(4, dtype=np.int64),
                      "t": torch.arange(3, dtype=torch.bfloat16), "s": np.float64(2.0)}}


# -- mutation --------------------------------------------------------------------------------------
_OPS = ("flip", "flip", "flip", "byte", "magic", "truncate", "insert", "delete", "dup", "ff", "splice",
        "append")


def mutate(corpus: list[dict], seed: int, i: int) -> tuple[int, bytes, bool]:
    """(seed index, mutated bytes, was it one bit flip) of input ``i``: a pure function."""
    r = random.Random((seed << 40) ^ i)
    j = i % len(corpus)
    b = bytearray(corpus[j]["data"])
    ops = [r.choice(_OPS) for _ in range(1 + (r.random() < 0.3) + (r.random() < 0.1))]
    for op in ops:
        n = len(b)
        at = r.randrange(n) if n else 0
        if op == "flip" and n:
            b[at] ^= 1 << r.randrange(8)
        elif op == "byte" and n:
            b[at] = r.randrange(256)
        elif op == "magic" and n:
            b[at] = r.choice((0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF))
        elif op == "truncate":
            del b[at:]
        elif op == "insert":
            b[at:at] = bytes(r.randrange(256) for _ in range(r.randint(1, 8)))
        elif op == "delete":
            del b[at:at + r.randint(1, 16)]
        elif op == "dup" and n:
            chunk = b[at:at + r.randint(1, 32)]
            to = r.randrange(n)
            b[to:to] = chunk
        elif op == "ff" and n:
            b[at:at + r.randint(2, 9)] = b"\xff" * r.randint(2, 9)
        elif op == "splice":
            same = [c for c in corpus if c["target"] == corpus[j]["target"]]
            other = r.choice(same)["data"]
            b[at:] = other[r.randrange(len(other) + 1):]
        elif op == "append":
            b += bytes(r.randrange(256) for _ in range(r.randint(1, 8)))
    return j, bytes(b), ops == ["flip"]


# -- running one input -----------------------------------------------------------------------------
class Runner:
    def __init__(self, max_numel: int, workdir: str) -> None:
        self.max_numel, self.path = max_numel, Path(workdir) / "fuzz.ckpt"
        self._sim = None          # the server_receive target's engine, built on first use

    def __call__(self, seed: dict, data: bytes) -> Any:
        import sparsecodec as sc
        from fl.checkpoint import load_checkpoint
        from fl.flower.state import decode_state

        t, kw, m = seed["target"], seed["kwargs"], self.max_numel
        if t == "decode":
            return sc.decode(data, max_numel=m, **kw)
        if t == "bundle":
            return sc.decode_bundle(data, max_numel=m, **kw)
        if t == "packed":
            return sc.decode_packed(data, kw["spec"], max_numel=m)
        if t == "patch":
            from sparsecodec.patch import apply_patch, decode_patch

            replica = {n: a.copy() for n, a in kw["old"].items()}
            apply_patch(replica, 3, decode_patch(data, kw["schema"], max_numel=m), kw["schema"])
            return replica
        if t == "server_receive":            # the whole server half: never raises, drops instead
            from fl.channel import Message

            if self._sim is None:
                self._sim = _tiny_sim()
            self._sim._round_spec = kw["spec"]
            msg = Message(data, 1, kw["client"], "up", {}, {}, 0)
            update, reason = self._sim._receive(0, kw["client"], msg, None, 20, {})
            if update is None:
                raise ClientDropped(reason)
            return dict(update.tensors)
        if t == "state":
            return decode_state(data, max_numel=m, max_bytes=1 << 24, max_skeleton_bytes=1 << 20)
        if t == "checkpoint_resigned":         # a crafted file: any payload, a matching digest
            import hashlib
            import struct

            from fl.checkpoint import MAGIC
            header = json.dumps({"format": "fl.checkpoint", "version": 1, "encoding": "FLST2",
                                 "payload_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                                separators=(",", ":"), sort_keys=True).encode()
            data = MAGIC + struct.pack("<HI", 1, len(header)) + header + data
        self.path.write_bytes(data)
        return load_checkpoint(self.path, max_bytes=1 << 24, max_numel=m, max_skeleton_bytes=1 << 20)

    def limit_bytes(self, seed: dict) -> int:
        """The caller's limit in bytes: max_numel elements of the widest dtype the target makes."""
        return self.max_numel * (8 if seed["target"] in ("decode", "bundle", "packed", "patch",
                                                         "server_receive") else 16)


def fingerprint(x: Any) -> Any:
    """A comparable view of a decoded value (arrays by dtype, shape and bytes)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return ("nd", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return ("dict", tuple((k, fingerprint(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(fingerprint(v) for v in x))
    from fl.flower.state import encode_state
    try:
        return ("state", encode_state(x))
    except Exception:
        return ("repr", repr(x))


def shape_of(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.ndarray):
        return (x.dtype.str, x.shape)
    if isinstance(x, dict):
        return tuple((k, shape_of(v)) for k, v in x.items())
    return type(x).__name__


def _new_stats() -> dict:
    return {"inputs": 0, "ok": 0, "documented": {}, "other": {}, "crashes": 0, "hangs": 0, "slow": 0,
            "silent_changes": 0, "valid_seed_bytes": 0, "nocrc_single_flip_shape_changes": 0,
            "traced": 0, "peak_traced_bytes": 0, "over_memory_limit": 0}


# -- the worker ------------------------------------------------------------------------------------
def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _injected(kind: str, limit: int) -> Any:
    """What ``--inject`` does at one input: proves each detector fires (the tests use it)."""
    if kind == "crash":
        os.kill(os.getpid(), 9)
    if kind == "hang":
        time.sleep(3600)
    if kind == "slow":                  # slow in the worker only, like a first-use compile
        return time.sleep(5) if limit else None
    if kind == "memory":
        return bytearray(3 * limit)
    raise TypeError("injected: an exception outside SparseCodecError")


def worker_main(conn, corpus_path: str, seed: int, max_numel: int, trace_every: int,
                as_margin: int, cur, t0, c0, inject: dict[int, str]) -> None:
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[v] = "1"
    import sparsecodec as sc

    with open(corpus_path, "rb") as f:
        corpus, refs = pickle.load(f)       # our own file, written by the parent just now
    workdir = tempfile.mkdtemp(prefix="fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    run = Runner(max_numel, workdir)
    seeds = {s["data"] for s in corpus}
    for s in corpus:                       # warm-up: imports (torch for states) before the limit
        run(s, s["data"])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    limit = _vm_size() + as_margin
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            start, stop, skip = task
            stats: dict[str, dict] = {}
            events: list[dict] = []
            for i in range(start, stop):
                if i in skip:
                    continue
                j, data, single_flip = mutate(corpus, seed, i)
                s = corpus[j]
                st = stats.setdefault(s["target"], _new_stats())
                st["inputs"] += 1
                traced = trace_every > 0 and (i // len(corpus)) % trace_every == 0   # every seed
                cur.value, c0.value, t0.value = i, time.process_time(), time.monotonic()
                if traced:
                    tracemalloc.start()
                try:
                    out, err = (run(s, data) if i not in inject
                                else _injected(inject[i], run.limit_bytes(s))), None
                except sc.SparseCodecError as exc:
                    out, err = None, exc
                except BaseException as exc:       # MemoryError, TypeError ...: findings
                    out, err = None, exc
                finally:
                    if traced:
                        peak = tracemalloc.get_traced_memory()[1]
                        tracemalloc.stop()
                t0.value = 0.0
                if traced:
                    st["traced"] += 1
                    st["peak_traced_bytes"] = max(st["peak_traced_bytes"], peak)
                    if peak > 2 * run.limit_bytes(s):
                        st["over_memory_limit"] += 1
                        events.append(_event("memory", s, i, data, f"tracemalloc peak {peak} bytes"))
                if err is None:
                    st["ok"] += 1
                    if i in inject:
                        pass
                    elif data in seeds:            # the mutations rebuilt a valid seed's bytes
                        st["valid_seed_bytes"] += 1
                    elif s["crc"] and fingerprint(out) != refs[j][0]:
                        st["silent_changes"] += 1
                        events.append(_event("silent", s, i, data, "decoded to different values"))
                    elif not s["crc"] and single_flip and s["target"] in ("decode", "bundle") \
                            and shape_of(out) != refs[j][1]:
                        st["nocrc_single_flip_shape_changes"] += 1
                elif isinstance(err, sc.SparseCodecError):
                    name = type(err).__name__
                    st["documented"][name] = st["documented"].get(name, 0) + 1
                else:
                    name = type(err).__name__
                    st["other"][name] = st["other"].get(name, 0) + 1
                    events.append(_event("other", s, i, data, f"{name}: {str(err)[:300]}"))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
            conn.send({"stats": stats, "events": events, "rss_growth": rss})
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


def _event(kind: str, s: dict, i: int, data: bytes, what: str) -> dict:
    return {"kind": kind, "target": s["target"], "seed_name": s["name"], "input": i, "what": what,
            "bytes_b64": base64.b64encode(data[:4096]).decode(), "len": len(data)}


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


def _confirm_child(conn, corpus: list[dict], args, i: int) -> None:
    j, data, _ = mutate(corpus, args.seed, i)
    with tempfile.TemporaryDirectory() as d:
        run, times, outcome = Runner(args.max_numel, d), [], ""
        for _ in range(2):                # the second run shows the cost without first-use work
            t = time.monotonic()
            try:
                run(corpus[j], data) if i not in args.inject else _injected(args.inject[i], 0)
                outcome = "decoded"
            except BaseException as exc:
                outcome = type(exc).__name__
            times.append(time.monotonic() - t)
    conn.send((times, outcome))


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
