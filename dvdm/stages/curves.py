"""A training stage's loss curve, as `dvc plots` can read it.

The trainer logs to `metrics.jsonl` (one JSON record per logged step, appended as it trains, so a resumed run
continues it). DVC plots read JSON, YAML, CSV and TSV but not JSON lines, and fail on records that lack the
plotted field (train-diffusion's prompt-swap checks are such records), so a training stage ends by writing
`curve.json`: the records that have a loss, as one JSON list (`dvc.yaml` plots it: x step, y loss).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dvdm.utils.atomic import write_json

LOG_FILE = "metrics.jsonl"
CURVE_FILE = "curve.json"
# how fast this machine trained, not what the model learned: left out, so an identical rerun leaves curve.json
# (kept in git) as it was
MACHINE_FIELDS = ("steps_per_second", "cpu_threads")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a trainer's `metrics.jsonl` ([] when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_curve(out_dir: str | Path, y: str = "loss") -> list[dict[str, Any]]:
    """Write `out_dir/curve.json` from `out_dir/metrics.jsonl`: the records with a step and a number `y`,
    without the machine's speed."""
    records = [{k: v for k, v in r.items() if k not in MACHINE_FIELDS} for r in read_log(Path(out_dir) / LOG_FILE)
               if "step" in r and isinstance(r.get(y), (int, float)) and not isinstance(r.get(y), bool)]
    write_json(Path(out_dir) / CURVE_FILE, records)
    return records
