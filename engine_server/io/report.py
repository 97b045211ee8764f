"""report.json: what a run did (settings, weights, device, per-frame losses), rewritten as frames finish."""
from __future__ import annotations

import json
from pathlib import Path

from .frames import write_atomic


def write_report(path: Path, report: dict) -> None:
    write_atomic(path, json.dumps(report, indent=2).encode())
