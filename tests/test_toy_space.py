"""A fourth target space, written in this one file, runs through train, sample, export and the ORT service.

It proves that a space owns its whole contract: the registry, the training stage, the torch pipeline, the
export (manifest, decode block, parity) and `OrtVideoPipeline` never branch on a space's name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")

from dvdm.spaces import SPACES, register_space  # noqa: E402
from dvdm.spaces.base import PixelSpace  # noqa: E402


class CentredFramesSpace(PixelSpace):
    """Toy: the frames themselves, as (pixel / 255 - 0.5)."""

    name = "toy-centred"
    description = "toy: frames centred on zero"

    def encode(self, video: np.ndarray) -> np.ndarray:
        return (video[1:].astype(np.float32) / 255.0 - 0.5).transpose(3, 0, 1, 2)

    def decode_spec(self) -> dict[str, Any]:
        return {"method": "pixels", "offset": 0.5, "scale": 255.0, "reference": "none"}


@pytest.fixture(scope="module")
def toy_space():
    register_space(CentredFramesSpace)
    yield CentredFramesSpace.name
    del SPACES[CentredFramesSpace.name]


def test_a_new_space_trains_samples_exports_and_serves(toy_space, tmp_path):
    from dvdm.config import IngestParams, TrainParams
    from dvdm.export import export_model
    from dvdm.pipeline import VideoPipeline
    from dvdm.runtime.pipeline import OrtVideoPipeline
    from dvdm.stages.ingest import run_ingest
    from dvdm.stages.train_diffusion import run_train_diffusion
    from dvdm.tracking.model_card import render_model_card

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_ingest(IngestParams(frames=4, height=16, width=16,
                                options={"num_train": 2, "num_val": 1, "num_test": 1, "seed": 1}), tmp_path / "data")
        metrics = run_train_diffusion(
            TrainParams(space=toy_space, steps=2, batch_size=2, sample_steps=2, log_every=1, text=False,
                        check_clips=0, diffusion={"num_timesteps": 20},
                        unet={"base_channels": 8, "channel_mults": [1, 2], "spatial_attention": [False, False],
                              "image_feature_channels": 4, "image_encoder_base": 8, "image_encoder_blocks": 1}),
            tmp_path / "data", tmp_path / "model")
        assert metrics["space"] == toy_space and metrics["target_shape"] == [3, 3, 16, 16]

        pipe = VideoPipeline.from_checkpoint(tmp_path / "model" / "checkpoint", device="cpu")
        assert isinstance(pipe.space, CentredFramesSpace)
        first = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
        video = pipe(first, None, steps=2, seeds=[0])
        assert video.shape == (1, 4, 16, 16, 3) and video.dtype == np.uint8

        result = export_model(tmp_path / "model", tmp_path / "export", steps=2, threads=1)
        assert result.manifest["space"]["name"] == toy_space and result.passed and result.parity is not None
        served = OrtVideoPipeline.from_export(tmp_path / "export", provider="cpu", threads=1)
        clip = served.generate(first[0], "", steps=2, seed=0)
        assert clip.shape == (4, 16, 16, 3) and (clip[0] == first[0]).all()

        card = render_model_card(model={"space": toy_space}, data={}, training={}, evaluation={})
        assert "toy: frames centred on zero" in card
    finally:
        torch.set_num_threads(threads)
