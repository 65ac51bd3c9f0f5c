"""Flow `dvdm-retrain` (scheduled): retrain when the data changed, register a challenger, run the gate.

"Changed" is decided by DVC hashes: the `ingest` stage is out of date (its source data or settings
changed; for a folder source add the data folder to the stage's deps), or the ingested data's hash differs
from the one recorded on the current champion. Unchanged data ends the run without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.environment import configure, project_dir

configure()

from prefect import flow, get_run_logger  # noqa: E402

from dvdm.tracking import registry  # noqa: E402
from flows.dvc_stages import data_hash, read_stages, stage_up_to_date  # noqa: E402
from flows.pipeline import pipeline  # noqa: E402
from flows.tracking_tasks import client_for  # noqa: E402


def data_changed(root: Path, model_name: str) -> tuple[bool, str]:
    stages = read_stages(root)
    if "ingest" in stages and not stage_up_to_date(root, stages["ingest"]):
        return True, "the ingest stage is out of date (new or changed source data or settings)"
    champion = registry.version_by_alias(client_for(root), registry.CHAMPION, model_name)
    if champion is None:
        return True, "there is no champion yet"
    seen = (champion.tags or {}).get("dvdm.data_hash")
    now = data_hash(root)
    if seen and now and seen != now:
        return True, f"the ingested data ({now[:12]}) differs from the champion's ({seen[:12]})"
    return False, "data unchanged since the champion was trained"


@flow(name="dvdm-retrain", log_prints=True)
def retrain(project: str | None = None, force: bool = False, model_name: str = registry.MODEL_NAME) -> dict[str, Any]:
    root = project_dir(project)
    changed, why = data_changed(root, model_name)
    logger = get_run_logger()
    if not (changed or force):
        logger.info("no retraining: %s", why)
        return {"retrained": False, "reason": why}
    logger.info("retraining: %s", why if changed else "forced")
    result = pipeline(project=str(root), model_name=model_name)
    return {"retrained": True, "reason": why if changed else "forced", **result}
