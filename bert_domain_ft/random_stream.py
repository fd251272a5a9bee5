"""Scalar random draws at numpy speed for the per-sentence loops of instance generation.

Calling ``Generator.random()`` once per draw costs ~0.5 µs of Python overhead; drawing blocks of 64k doubles and
handing them out one at a time costs a tenth of that, and keeps the stream a pure function of the seed.

    draws = UniformStream(np.random.default_rng([seed, epoch, shard]))
    if draws.uniform() < 0.5: ...
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 16


class UniformStream:
    def __init__(self, generator: np.random.Generator):
        self.generator = generator
        self._block = generator.random(_BLOCK).tolist()
        self._next = 0

    def uniform(self) -> float:
        """A float in [0, 1)."""
        if self._next == _BLOCK:
            self._block = self.generator.random(_BLOCK).tolist()
            self._next = 0
        value = self._block[self._next]
        self._next += 1
        return value

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high], both inclusive."""
        return low + int(self.uniform() * (high - low + 1))
