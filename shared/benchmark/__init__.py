"""The lesion-injection benchmark: real healthy anatomy + synthetic lesions, exact GT negatives.

``python -m shared.benchmark --out DIR`` builds it; :func:`load_manifest` reads it back.
"""

from shared.benchmark.build import (
    DOMAINS,
    HELD_OUT_DOMAIN,
    BenchmarkItem,
    build_benchmark,
    load_manifest,
)

__all__ = ["DOMAINS", "HELD_OUT_DOMAIN", "BenchmarkItem", "build_benchmark", "load_manifest"]
