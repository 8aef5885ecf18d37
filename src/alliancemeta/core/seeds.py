"""Seeds: one seed in the config, one derived seed per random step.

Every random step (a sampler run, a bootstrap, a random subset draw) takes an integer seed derived from
the config seed and a stable text key naming the step, ``(seed + crc32(key)) mod 2**32``.  ``crc32`` is
stable across processes and Python versions (``hash()`` of a string is salted per process and is never
used), so two runs give identical draws.
"""

from __future__ import annotations

import zlib


def derive_seed(seed: int, key: str) -> int:
    """The seed of the random step named ``key``: ``(seed + crc32(key)) mod 2**32``."""
    return (int(seed) + zlib.crc32(key.encode())) % 2**32
