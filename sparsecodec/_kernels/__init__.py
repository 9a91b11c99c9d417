"""All Numba code of sparsecodec lives in this private package.

Conventions (see DESIGN.md, "Kernels"):

* every kernel is compiled through :func:`jit` (``cache=True``, ``nogil=True``, never
  ``fastmath``: bitstreams must be bit-reproducible across runs and machines);
* kernels take *preallocated* outputs and return a count or a status code; they never raise,
  never allocate input-sized memory and never format strings;
* kernels that read a bitstream check every read against the buffer length themselves,
  because Numba does not bounds-check;
* each kernel has a slow, obvious NumPy/Python reference in ``tests/`` and the two agree
  byte for byte (also with ``NUMBA_DISABLE_JIT=1``).

Status codes are small negative integers; the Python wrappers map them to exceptions.
"""

from __future__ import annotations

import numba

__all__ = ["jit", "OK", "ERR_TRUNCATED", "ERR_CORRUPT", "ERR_RANGE", "ERR_ORDER",
           "ERR_NONFINITE", "ERR_PADDING", "ERR_OVERFLOW"]

OK = 0
ERR_TRUNCATED = -1    # a read would go past the end of the buffer
ERR_CORRUPT = -2      # a decoded value is impossible (bad codeword, inconsistent count)
ERR_RANGE = -3        # a decoded index is >= numel
ERR_ORDER = -4        # indices are not strictly increasing
ERR_NONFINITE = -5    # NaN or Inf found where finite values are required
ERR_PADDING = -6      # the bits after the last codeword are not zero / bytes left over
ERR_OVERFLOW = -7     # an output buffer would overflow (encoder sized it wrongly, or input lies)


def jit(*args, **kwargs):
    """``numba.njit`` with the project's fixed options (cache, nogil, no fastmath).

    Use bare (``@jit``) or with an explicit signature (``@jit("int64(uint8[:])")``).
    """
    opts = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
    opts.update(kwargs)
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return numba.njit(**opts)(args[0])
    return numba.njit(*args, **opts)
