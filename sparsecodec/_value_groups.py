"""Value blocks of a compact message: which TopK entries share one ``encode_values`` call.

With ``MessageSpec(values_scope="tensor")`` (the default) every TopK entry is its own block,
the layout of every message written before. With ``values_scope="message"`` the entries are
grouped by (value coder, dtype, allow_nonfinite), groups in the order of their first entry
in schema order, and each group's values (concatenated in schema order, each tensor's in its
support order) are one block: one scale per group for ``q8`` / ``q8b`` / ``sign``.

Ledgers count bits per tensor, so a block's ``8 * nbytes`` bits are split over its tensors
deterministically from what both ends know (the ks): tensor ``t`` gets
``floor(bits * k_t / K)``, and the first tensor of the block also gets the remainder (all of
it when ``K = 0``). Sender and receiver compute the same split, and it sums exactly.

    >>> share_bits(90, [1, 2, 1])
    [23, 45, 22]
    >>> share_bits(0, [0, 0])
    [0, 0]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["value_groups", "share_bits"]


def value_groups(topk: Sequence[int], codecs: Sequence[Any], dtypes: Sequence[Any],
                 values_scope: str) -> list[list[int]]:
    """The blocks (lists of entry positions, schema order) of a compact message's values."""
    if values_scope == "tensor":
        return [[i] for i in topk]
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i in topk:
        c = codecs[i]
        groups.setdefault((c.values, np.dtype(dtypes[i]).str, bool(c.allow_nonfinite)), []).append(i)
    return list(groups.values())      # dicts keep insertion order: first appearance


def share_bits(bits: int, ks: Sequence[int]) -> list[int]:
    """``bits`` split k-proportionally (floors), the remainder on the first entry."""
    total = sum(ks)
    if total == 0:
        return [bits] + [0] * (len(ks) - 1)
    shares = [bits * k // total for k in ks]
    shares[0] += bits - sum(shares)
    return shares
