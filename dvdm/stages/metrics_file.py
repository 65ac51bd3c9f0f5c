"""A stage's DVC metrics file: a few headline numbers, under names every stage shares.

`dvc metrics show` prints one table with a row per metrics file and a column per key found in any of them:
when each stage wrote its own key names (and protocol strings), that table was ~150 columns wide. So every
stage writes its headline under the shared names of `HEADLINE` (a row leaves blank the columns it has no
number for), rounded to 4 significant digits, and the table fits a 120-column terminal. Timings are no headline:
a metrics file in git then changes when a result changes, not at every rerun (MLflow has the timings). Everything else a
stage measured, and how (protocols, settings, notes), goes to its results file (`PipelineStage.results`):
DVC does not read that one as metrics; MLflow logs it whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dvdm.utils.atomic import write_json

# the columns of `dvc metrics show`; what each means in a stage's row is in the README (DVC section)
HEADLINE = {
    "clips": "clips the stage processed or scored",
    "loss": "held-out loss of the trained model",
    "psnr": "PSNR (dB) of the stage's output against its reference",
    "ssim": "SSIM of the stage's output against its reference",
    "fvd": "FVD (I3D) of the generated clips, when computed",
    "direction": "prompt-swap direction accuracy on held-out first frames",
    "speed": "prompt-swap speed accuracy on held-out first frames",
}
SIGNIFICANT_DIGITS = 4
RESULTS_FILE = "results.json"  # beside a training or evaluation stage's outputs: everything it measured


def headline(values: Mapping[str, Any]) -> dict[str, int | float]:
    """`values` as a metrics file holds them: only `HEADLINE` names (another name is a programming error),
    numbers rounded to 4 significant digits, missing ones (None, not finite) left out."""
    unknown = sorted(set(values) - set(HEADLINE))
    if unknown:
        raise ValueError(f"metrics file keys {unknown} are not among the shared headline names {list(HEADLINE)}")
    out: dict[str, int | float] = {}
    for key, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        number = float(value)
        if not math.isfinite(number):
            continue
        out[key] = value if isinstance(value, int) else float(f"{number:.{SIGNIFICANT_DIGITS}g}")
    return out


def write_metrics(path: str | Path, values: Mapping[str, Any]) -> dict[str, int | float]:
    """Write a stage's DVC metrics file (atomically); returns what it holds (see `headline`)."""
    metrics = headline(values)
    write_json(Path(path), metrics)
    return metrics
