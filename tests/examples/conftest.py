"""The demo's own modules (its corpus and probe-data builders) live beside it in examples/, not in the library."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
