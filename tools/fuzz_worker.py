"""The long fuzz's child-process side: decoding one input, and the processes that do it.

Holds :class:`Runner` (one input through its target's decoder), the comparison helpers
(:func:`fingerprint`, :func:`shape_of`), the per-target counters, the ``--inject`` faults, and the
process targets :func:`worker_main` (a worker under ``RLIMIT_AS``) and :func:`_confirm_child`
(a timed-out input run again alone). Module-level functions, so spawn and forkserver children
import them by name; ``tools/fuzz_long.py`` starts and watches them.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__:                    # imported as tools.fuzz_worker
    from .fuzz_corpus import _tiny_sim, mutate
else:                              # tools/ on sys.path: the script, its children, the tests
    from fuzz_corpus import _tiny_sim, mutate


def _client_dropped():
    from sparsecodec.errors import SparseCodecError

    class ClientDropped(SparseCodecError):
        """The server's receive path dropped the client: the documented outcome of hostile bytes
        (anything it raises instead is an aborted server round, counted under "other")."""
    return ClientDropped


ClientDropped = _client_dropped()


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


# -- a timed-out input, run again alone ------------------------------------------------------------
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
