"""Shared fixtures. Real video fixtures come from ../shared/data/real (or $DVDM_REAL_DATA) and are never
copied into the repository; tests that need them skip with the reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    env = os.environ.get("DVDM_REAL_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "real"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real video fixtures; skips the test when it is absent."""
    path = real_data_dir()
    if path is None:
        pytest.skip("real video fixtures not found: set DVDM_REAL_DATA or place them at ../shared/data/real")
    return path


TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "spatial_attention": [False, False],
             "attention_heads": 1, "attention_head_dim": 8}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real (2-step) text-conditioned rgb diffusion run on tiny synthetic 16x64x64 clips: its directory."""
    from dvdm.config import IngestParams, TrainParams
    from dvdm.stages.ingest import run_ingest
    from dvdm.stages.train_diffusion import run_train_diffusion

    root = tmp_path_factory.mktemp("tiny_model")
    run_ingest(IngestParams(frames=16, options={"num_train": 4, "num_val": 1, "num_test": 2, "seed": 3}),
               root / "ingested")
    run_train_diffusion(TrainParams(space="rgb", steps=2, batch_size=2, sample_steps=2, log_every=1,
                                    unet=dict(TINY_UNET), diffusion={"num_timesteps": 100}),
                        root / "ingested", root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A factory of fresh MLflow SQLite stores: `mlflow_store(name) -> MlflowClient`. The schema is created
    once per session (migrations take seconds) and copied for each store, so stores stay independent."""
    import shutil

    from dvdm.tracking.store import open_client

    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    open_client(f"sqlite:///{template}").search_experiments()

    def make(name: str):
        dest = tmp_path_factory.mktemp(name)
        shutil.copy(template, dest / "mlflow.db")
        return open_client(f"sqlite:///{dest / 'mlflow.db'}")

    return make


# the team-scale servers (PostgreSQL, MLflow and Prefect on it): one set per session, shared by every module
from team_servers import mlflow_server, postgres, prefect_server  # noqa: E402,F401
