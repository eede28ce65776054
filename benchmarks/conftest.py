"""Micro-benchmark settings.

The suite runs each benchmark once, on small indexes, so the benchmarks
cannot rot. For figures, run them in full::

    CHRONOSCORE_BENCH_ENTRIES=1000000 pytest benchmarks --benchmark-enable

and read the table pytest-benchmark prints.
"""

from __future__ import annotations

import os

ENTRIES = int(os.environ.get("CHRONOSCORE_BENCH_ENTRIES", "20000"))
