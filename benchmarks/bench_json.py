"""Writing a benchmark's JSON: its results, plus the machine they were measured on (these machines are noisy,
so the load average travels with every number)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from dvdm.utils.atomic import write_json


def write_results(path: str | Path, benchmark: str, results: dict[str, Any], **versions: Any) -> None:
    """`{"benchmark", **results, "machine"}` to `path` (atomically), and say so."""
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()[0],
               **versions}
    write_json(path, {"benchmark": benchmark, **results, "machine": machine})
    print(f"wrote {path}")
