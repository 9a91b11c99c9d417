"""A ``torch.distributed`` DDP communication hook: top-k + error feedback over gradient buckets.

Modelled on PyTorch's PowerSGD hook (``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``):
one :class:`TopKHookState` holds the configuration and the state for every bucket, and
:func:`topk_hook` is registered with ``DistributedDataParallel.register_comm_hook``.

For each gradient bucket (a flat 1-D tensor holding several parameters' gradients), once
``state.iter >= start_iter``:

1. ``a = g + e`` (error feedback, :class:`sparsecodec.ErrorFeedback`, one residual per bucket
   index); ``a`` is encoded with :class:`sparsecodec.TopK` (k from the density or k rule,
   applied to the bucket's numel); ``e = a - x_hat`` keeps what was not sent;
2. the frames, whose lengths differ from rank to rank, are exchanged with an all-gather of
   their sizes, then an all-gather of the bytes padded to the longest (uint8 tensors);
3. every rank decodes every rank's frame (as hostile bytes: a frame that is not a top-k frame
   of this bucket's size is a :class:`~sparsecodec.FrameError`), sums them in rank order and
   divides by the world size, so all replicas get bit-identical gradients.

Before ``start_iter`` the hook allreduces densely, as PowerSGD does: DDP rebuilds its buckets
after the first iteration, and a residual memorised before the rebuild would not match the
new bucket layout, so ``start_iter >= 2`` is required.

``state.bits_sent`` counts the bits this rank put on the wire in compressed steps, read from
the frames' bytes (``8 * len(frame)``); ``state.dense_bits`` counts ``32 * numel`` per bucket
for the dense steps (a formula: the float32 payload one rank contributes to the allreduce, not
the bytes a ring or tree algorithm actually moves). The all-gathered sizes (one int64 per
rank and bucket) are not counted.

A rank that cannot encode its bucket (a NaN or Inf gradient, say) sends an empty frame instead
of raising alone, which would leave the other ranks waiting in the all-gather forever; then
every rank raises (``ConfigError``). The failing rank's residual is exactly as it was (restored
bit for bit, see :mod:`sparsecodec.feedback`); the other ranks' residuals already hold the
step, so reload a checkpoint of the state before going on.

Example (one process, gloo; with several processes each rank runs the same code)::

    >>> import os, tempfile, torch, torch.distributed as dist
    >>> from torch.nn.parallel import DistributedDataParallel as DDP
    >>> from sparsecodec.ddp import TopKHookState, topk_hook
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> model = DDP(torch.nn.Linear(100, 10))
    >>> state = TopKHookState(density=0.01, start_iter=2, keep_frames=True)
    >>> model.register_comm_hook(state, topk_hook)
    >>> for _ in range(3):
    ...     model.zero_grad()
    ...     model(torch.randn(8, 100)).square().sum().backward()
    >>> state.iter, state.steps_compressed, sum(int((p.grad != 0).sum()) for p in model.parameters())
    (3, 1, 10)
    >>> state.bits_sent == 8 * sum(len(f) for f in state.last_frames.values())
    True
    >>> torch.save(state.state_dict(), store + ".pt")
    >>> restored = TopKHookState(density=0.01, start_iter=2)
    >>> restored.load_state_dict(torch.load(store + ".pt", weights_only=True))
    >>> restored.iter, restored.bits_sent == state.bits_sent
    (3, True)
    >>> dist.destroy_process_group(); os.remove(store); os.remove(store + ".pt")

Tested on CPU buckets with gloo (``tests/test_ddp_hook.py``, 2 processes). A CUDA bucket is
copied to the CPU to be coded and the mean copied back; that path has not been run here (no
CUDA build of torch on the test machine). torch is imported by this module only;
``import sparsecodec`` does not import it.
"""

# no ``from __future__ import annotations``: DDP's register_comm_hook compares the hook's
# annotations with dist.GradBucket and Future[Tensor] as objects, not strings
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError, FrameError
from .feedback import ErrorFeedback
from .info import frame_info
from .generic import decode
from .topk import TopK

__all__ = ["TopKHookState", "topk_hook"]

_STATE_VERSION = 1
_COUNTERS = ("iter", "bits_sent", "dense_bits", "numel_compressed", "steps_compressed")


class TopKHookState:
    """Configuration and state of :func:`topk_hook` for all of a DDP model's buckets.

    Args:
        process_group: the group to communicate in (``None``: the default group).
        density: fraction of each bucket's entries sent (with ``k_rule``, see
            :func:`sparsecodec.k_for`); give either this or ``k``.
        k: entries sent per bucket (a bucket smaller than ``k`` is a ``ConfigError``).
        k_rule: ``"round"``, ``"ceil"`` or ``"flare"`` (see :class:`sparsecodec.TopK`).
        start_iter: iterations allreduced densely before compression starts (>= 2, see the
            module docstring).
        values: the value coder (``"fp32"`` exact; ``"bf16"``/``"fp16"`` halve the value bits).
        index: the index coder (``"auto"`` picks the smallest).
        keep_frames: keep this rank's last frame of every bucket in ``last_frames``
            (``{bucket_index: bytes}``), for inspection and tests.

    Attributes ``iter``, ``bits_sent``, ``dense_bits``, ``numel_compressed`` (entries of all
    compressed buckets, summed over steps) and ``steps_compressed`` are the statistics;
    :meth:`bits_per_param` is ``bits_sent / numel_compressed``.
    """

    def __init__(self, process_group: Any = None, *, density: float | None = None,
                 k: int | None = None, k_rule: str = "round", start_iter: int = 10,
                 values: str = "fp32", index: str = "auto", keep_frames: bool = False) -> None:
        if isinstance(start_iter, bool) or not isinstance(start_iter, int) or start_iter < 2:
            raise ConfigError(
                f"start_iter must be an int >= 2, got {start_iter!r}: DDP rebuilds its buckets "
                "after the first iteration, so residuals kept before that would not match")
        # TopK validates density / k / k_rule / values / index and says what is wrong
        self.codec = TopK(k=k, density=density, k_rule=k_rule, values=values, index=index)
        self.process_group = process_group
        self.start_iter = start_iter
        self.keep_frames = bool(keep_frames)
        self.ef = ErrorFeedback()
        self.last_frames: dict[int, bytes] = {}
        self.iter = 0
        self.bits_sent = 0
        self.dense_bits = 0
        self.numel_compressed = 0
        self.steps_compressed = 0

    def __repr__(self) -> str:
        return (f"TopKHookState(codec={self.codec!r}, start_iter={self.start_iter}, "
                f"iter={self.iter}, bits_sent={self.bits_sent})")

    def residual(self, bucket_index: int) -> torch.Tensor | None:
        """A copy of the residual of one bucket (a 1-D tensor), or ``None`` before it has one."""
        e = self.ef.residual(str(int(bucket_index)))
        return None if e is None else torch.from_numpy(e.copy())

    def bits_per_param(self) -> float:
        """Bits sent per compressed gradient entry, over all compressed steps so far."""
        return self.bits_sent / self.numel_compressed if self.numel_compressed else 0.0

    def _maybe_increase_iter(self, bucket: dist.GradBucket) -> None:
        # as in PowerSGD: the bucket DDP flags as last ends the iteration
        if bucket.is_last():
            self.iter += 1

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters and residuals as plain ints / tensors: ``torch.load(..., weights_only=True)``
        reads it. The process group is not saved (as in PowerSGD's state)."""
        out: dict[str, Any] = {"version": _STATE_VERSION}
        out.update({name: int(getattr(self, name)) for name in _COUNTERS})
        out["residuals"] = {int(name): torch.from_numpy(e.copy())
                            for name, e in self.ef.state_dict()["residuals"].items()}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (validated before anything changes)."""
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ConfigError("state must be the dict returned by TopKHookState.state_dict() "
                              f"(version {_STATE_VERSION})")
        counters = {}
        for name in _COUNTERS:
            v = state.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"state[{name!r}] must be a non-negative int, got {v!r}")
            counters[name] = v
        residuals = state.get("residuals")
        if not isinstance(residuals, Mapping):
            raise ConfigError("state['residuals'] must be a dict {bucket_index: 1-D tensor}")
        arrays = {}
        for idx, t in residuals.items():
            if (isinstance(idx, bool) or not isinstance(idx, int) or not isinstance(t, torch.Tensor)
                    or t.dim() != 1 or t.dtype not in (torch.float32, torch.float64)):
                raise ConfigError(f"residual {idx!r} must be a 1-D float32/float64 tensor "
                                  "keyed by its bucket index")
            arrays[str(idx)] = t.detach().cpu().numpy()
        self.ef.load_state_dict({"residuals": arrays})   # copies the arrays
        for name, v in counters.items():
            setattr(self, name, v)
        self.last_frames = {}


def _dense_allreduce(group: Any, buffer: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    # divide first, like torch's allreduce_hook (no fp16 overflow; exact for a power-of-2 world)
    buffer.div_(group.size())
    return (dist.all_reduce(buffer, group=group, async_op=True).get_future()
            .then(lambda fut: fut.value()[0]))


def _all_gather_bytes(group: Any, frame: bytes,
                      device: torch.device) -> tuple[list[int], Any, list[torch.Tensor]]:
    """All-gather variable-length byte strings: sizes first, then the bytes padded to the longest.

    Both collectives are issued (and the sizes awaited) on the caller's thread, so every rank
    issues them in the same order as its other buckets' collectives; a collective started from
    a future's callback could interleave differently on different ranks.
    """
    world = group.size()
    size = torch.tensor([len(frame)], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    if min(lengths) == 0:     # a rank failed to encode: every rank skips the bytes (see topk_hook)
        return lengths, None, []
    longest = max(lengths)
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[:len(frame)] = torch.frombuffer(bytearray(frame), dtype=torch.uint8)
    mine = mine.to(device)
    gathered = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    work = dist.all_gather(gathered, mine, group=group, async_op=True)
    return lengths, work, gathered


def _decode_bucket(data: bytes, numel: int, dtype: np.dtype, rank: int) -> np.ndarray:
    """One rank's frame for a bucket, decoded; anything but a top-k frame of it is a FrameError."""
    info = frame_info(data)
    if info.wire_id != TopK.wire_id:
        raise FrameError(f"rank {rank} sent a frame of wire id {info.wire_id}, expected a top-k "
                         f"frame (wire id {TopK.wire_id})")
    x = decode(data, max_numel=numel)
    if not isinstance(x, np.ndarray) or x.shape != (numel,) or x.dtype != dtype:
        shape = getattr(x, "shape", type(x).__name__)
        raise FrameError(f"rank {rank} sent a frame of {getattr(x, 'dtype', '?')}{shape}, "
                         f"expected {dtype}({numel},) for this bucket")
    return x


def topk_hook(state: TopKHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: top-k + error feedback, all-gathered frames, mean of decodes.

    Register with ``ddp_model.register_comm_hook(state, topk_hook)``; returns a
    ``torch.futures.Future`` holding the averaged bucket (written into ``bucket.buffer()``),
    like the stock hooks. See the module docstring for what each step does.
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    if state.iter < state.start_iter:
        state.dense_bits += 32 * buffer.numel()
        state._maybe_increase_iter(bucket)
        return _dense_allreduce(group, buffer)

    if buffer.dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"topk_hook compresses float32/float64 gradients, got {buffer.dtype}; "
                          "use a dense or fp16/bf16 hook for these parameters")
    index = bucket.index()
    device = buffer.device
    grad = buffer.detach().cpu()          # a view on CPU, a copy from another device
    try:
        frame, error = bytes(state.ef.step(str(index), grad, state.codec)), None
    except Exception as exc:  # noqa: BLE001 - e.g. a NaN gradient (the residual is left as it was)
        # raising here would leave the other ranks waiting in the all-gather forever: send an
        # empty frame (a real one is never empty) so that every rank raises together
        frame, error = b"", exc
    lengths, work, gathered = _all_gather_bytes(group, frame, device)
    failed = [rank for rank, n in enumerate(lengths) if n == 0]
    if failed:
        if error is not None:
            raise error
        raise ConfigError(f"rank(s) {failed} could not encode bucket {index} (their error says "
                          "why, e.g. a non-finite gradient); this rank's residual already holds "
                          "the step: reload the state (load_state_dict) before going on")
    state.bits_sent += 8 * len(frame)
    state.numel_compressed += buffer.numel()
    if bucket.is_last():
        state.steps_compressed += 1
    if state.keep_frames:
        state.last_frames[index] = frame
    state._maybe_increase_iter(bucket)
    numel, dtype = buffer.numel(), grad.numpy().dtype
    world = len(lengths)

    def average(fut: torch.futures.Future) -> torch.Tensor:
        fut.wait()
        total = np.zeros(numel, dtype)
        for rank, (n, t) in enumerate(zip(lengths, gathered)):
            data = t[:n].cpu().numpy().tobytes()
            np.add(total, _decode_bucket(data, numel, dtype, rank), out=total)
        total /= world
        buffer.copy_(torch.from_numpy(total))
        return buffer

    return work.get_future().then(average)
