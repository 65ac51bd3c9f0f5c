"""A throw-away git + DVC project with the repository's pipeline and tiny settings (every stage runs in
seconds on a CPU), for the tests that run the Prefect flow or `dvdm pipeline` end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_project(root: Path, **train: Any) -> Path:
    """The project at `root` (created): dvc.yaml, the code its stages depend on, tiny params.yaml (`train`
    settings override the tiny train section), `git init` and `dvc init`."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("dvdm", "serving"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["options"].update(num_train=4, num_val=2, num_test=2)
    params["train_ae"].update(steps=2, batch_size=4, base_channels=8, eval_clips=1, log_every=1)
    params["train"].update({"steps": 2, "batch_size": 2, "sample_steps": 2, "log_every": 1, "text": False,
                            "unet": {"base_channels": 8, "channel_mults": [1, 2], "spatial_attention": [False, False],
                                     "attention_heads": 1, "attention_head_dim": 8}, **train})
    params["evaluate"].update(max_clips=2, steps=2, batch_size=2, grid_clips=2, fvd=False, prompt_swap_clips=1,
                              prompt_swap_drawn=1)
    params["export"].update(parity_steps=2)
    params["promote"].update(metric="psnr", direction="max")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=root, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, env=env, check=True)
    return root
