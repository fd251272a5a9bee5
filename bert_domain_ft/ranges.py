"""Index arithmetic shared by the data stages.

concatenated_ranges(np.array([10, 50]), np.array([3, 2]))  # → [10, 11, 12, 50, 51]
"""

from __future__ import annotations

import numpy as np


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    run_starts = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - run_starts, lengths) + np.arange(total)
