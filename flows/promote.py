"""Flow `dvdm-promote`: run the promotion gate on a registered version (default: the `challenger`).

The gate (params.yaml section `promote`: metric, direction, margin) compares the version's evaluation
metrics with the champion's; only a win moves the `champion` alias, and the decision is recorded as tags.
"""

from __future__ import annotations

from typing import Any

from flows.environment import configure, project_dir

configure()

from prefect import flow, get_run_logger  # noqa: E402

from dvdm.tracking import registry  # noqa: E402
from dvdm.tracking.promotion import Gate, promote as run_gate  # noqa: E402
from flows.tracking_tasks import client_for, project_section  # noqa: E402


@flow(name="dvdm-promote", log_prints=True)
def promote(project: str | None = None, version: str = registry.CHALLENGER, model_name: str = registry.MODEL_NAME,
            metric: str | None = None, direction: str | None = None, margin: float | None = None) -> dict[str, Any]:
    root = project_dir(project)
    client = client_for(root)
    mv = registry.get_version(client, version, model_name)
    gate = Gate.from_params(project_section(root, "promote"), metric, direction, margin)
    decision = run_gate(client, mv.version, gate, name=model_name)
    get_run_logger().info("version %s: %s", mv.version, decision.reason)
    return {"model_name": model_name, "version": str(mv.version), **decision.to_dict()}
