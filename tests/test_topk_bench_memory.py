"""benchmarks.topk_bench's peak-memory figure is the measuring process's own peak.

The old figure was ``ru_maxrss`` growth in a subprocess, which starts at the *parent's*
high-water mark (execve carries it over), so a parent that had peaked higher than the encode
needs read "RSS growth 0 B". The test reproduces that condition (a parent holding 256 MB)
and asks for a figure that is non-zero and grows with n (4x n at density 0.1: measured about
5x, 0.5 MB -> 2.6 MB; 2.5x leaves room for allocator noise, a constant 0 or an inherited
baseline cannot pass).
"""

import sys

import numpy as np
import pytest

from benchmarks.topk_bench import bench_topk_memory



def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_hwm(),
                                reason="the peak-memory figure is read from /proc/self/status after resetting it through /proc/self/clear_refs (Linux only, writable procfs)")


def test_peak_memory_is_own_and_scales_with_n():
    ballast = np.ones(32_000_000)          # 256 MB resident in the parent, as a benchmark runner
    assert ballast[-1] == 1.0
    small, large = (bench_topk_memory(n=n, density=0.1)[0] for n in (250_000, 1_000_000))
    del ballast
    for row in (small, large):
        assert row["rss_method"] == "VmHWM growth after clear_refs reset", row
        assert row["peak_extra_bytes_rss"] > 0 and row["peak_extra_bytes_tracemalloc"] > 0, row
        assert row["within_limit"], row
    assert large["peak_extra_bytes_rss"] >= 2.5 * small["peak_extra_bytes_rss"], (small, large)
    assert large["peak_extra_bytes_tracemalloc"] >= 2.5 * small["peak_extra_bytes_tracemalloc"], (small, large)
