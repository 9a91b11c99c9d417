"""The long fuzz's inputs: the corpus of valid seeds and the mutation that makes input ``i``.

Holds :func:`build_corpus` (valid frames of every codec and target, with and without checksums),
its generators (a tiny EC simulation's state and round-1 uplinks, node states of each algorithm)
and :func:`mutate`, a pure function of (seed, i). Used by ``tools/fuzz_long.py`` (the parent)
and ``tools/fuzz_worker.py`` (the child processes).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any


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
