"""The Python API, diffusers-style (issue 16): `from_pretrained(path or models:/...)` on both pipelines, and a
call with one image (array, PIL image or path) and a prompt that returns its frames. The README's example
(`README_EXAMPLE`, the text of /tmp/h16/cli-api-docs.md) runs here as written, on tiny models."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")

from PIL import Image  # noqa: E402
from test_model_refs import register  # noqa: E402
from test_serving_app import build_tiny_export  # noqa: E402

from dvdm.model_ref import ModelRefError  # noqa: E402
from dvdm.pipeline import VideoPipeline  # noqa: E402
from dvdm.runtime.errors import InvalidRequest  # noqa: E402
from dvdm.runtime.pipeline import OrtVideoPipeline  # noqa: E402

README_EXAMPLE = '''
from PIL import Image

from dvdm.pipeline import VideoPipeline             # torch: the trained model (a training run folder)
from dvdm.runtime.pipeline import OrtVideoPipeline  # numpy + ONNX Runtime only: what `dvdm serve` runs
from dvdm.video import write_mp4

image = Image.open("first_frame.png")  # or a path, or a uint8 (H, W, 3) array; any size

# the registered champion (MLFLOW_TRACKING_URI, else the project's ./work store), or an export folder
pipe = OrtVideoPipeline.from_pretrained("models:/dvdm@champion")
frames = pipe(image, "a red circle moves up", seed=0)  # uint8 (T, H, W, 3): the model's frames and size
write_mp4("video.mp4", frames, fps=8)

# a training run folder (or its checkpoint/): the torch model the export was made from
pipe = VideoPipeline.from_pretrained("models/diffusion")
frames = pipe("first_frame.png", "a red circle moves up", steps=25, seed=0)
'''


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory)


@pytest.fixture(scope="module")
def champion(mlflow_store, tiny_export) -> str:
    """The tracking URI of a store where `models:/dvdm@champion` is the tiny export."""
    client = mlflow_store("python-api")
    register(client, tiny_export, "dvdm", "champion")
    return client.tracking_uri


def first_frame(h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_readme_example_runs_as_written(tiny_model, champion, tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    os.symlink(tiny_model, tmp_path / "models" / "diffusion")
    Image.fromarray(first_frame()).save(tmp_path / "first_frame.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion)
    scope: dict = {}
    exec(compile(README_EXAMPLE, "README example", "exec"), scope)
    assert scope["frames"].shape == (16, 64, 64, 3) and scope["frames"].dtype == np.uint8  # the torch model's
    assert (tmp_path / "video.mp4").stat().st_size > 0


def test_ort_pipeline_takes_any_image_form_and_a_prompt(tiny_export, tmp_path):
    pipe = OrtVideoPipeline.from_pretrained(tiny_export, provider="cpu", threads=1)
    image = first_frame()
    Image.fromarray(image).save(tmp_path / "f.png")
    video = pipe(image, "a red circle moves up", seed=3)
    assert video.shape == (pipe.frames, pipe.height, pipe.width, 3) and video.dtype == np.uint8
    for same in (tmp_path / "f.png", str(tmp_path / "f.png"), Image.fromarray(image)):
        np.testing.assert_array_equal(pipe(same, "a red circle moves up", seed=3), video)
    np.testing.assert_array_equal(pipe.generate(image, "a red circle moves up", seed=3), video)
    batch = pipe([image, Image.fromarray(image[::-1])], ["a red circle moves up", "x"], seeds=[3, 4])
    assert batch.shape == (2, *video.shape)
    np.testing.assert_array_equal(batch[0], video)
    with pytest.raises(InvalidRequest, match="seed= is for one image"):
        pipe([image], ["x"], seed=1)
    with pytest.raises(InvalidRequest, match="not seeds="):
        pipe(image, "x", seeds=[1])
    with pytest.raises(InvalidRequest, match="image must be uint8"):
        pipe(image.astype(np.float32), "x")


def test_torch_pipeline_takes_a_run_folder_and_any_image_form(tiny_model, tmp_path):
    pipe = VideoPipeline.from_pretrained(tiny_model, device="cpu")  # the run folder, not its checkpoint/
    image = first_frame(64, 64)
    video = pipe(image, "a red square moves left", steps=2, seed=5)
    assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
    Image.fromarray(image).save(tmp_path / "f.png")
    np.testing.assert_array_equal(pipe(tmp_path / "f.png", "a red square moves left", steps=2, seed=5), video)
    np.testing.assert_array_equal(pipe(image[None], ["a red square moves left"], steps=2, seeds=[5])[0], video)
    assert pipe(first_frame(40, 48), "x", steps=1).shape == video.shape  # resized as the export would
    assert pipe.num_timesteps == 100


def test_each_pipeline_names_the_other_for_the_wrong_kind_of_model(tiny_model, tiny_export, champion):
    with pytest.raises(ModelRefError, match="an ONNX export, which the torch pipeline cannot load.*OrtVideoPipeline"):
        VideoPipeline.from_pretrained(tiny_export)
    with pytest.raises(ModelRefError, match=r"models:/dvdm@champion \(version 1\): an ONNX export"):
        VideoPipeline.from_pretrained("models:/dvdm@champion", tracking_uri=champion)
    with pytest.raises(ModelRefError, match="a training checkpoint, not an export.*VideoPipeline.from_pretrained"):
        OrtVideoPipeline.from_pretrained(tiny_model)
    with pytest.raises(ModelRefError, match="no such model folder"):
        OrtVideoPipeline.from_pretrained("models/nowhere")


def test_a_downloaded_version_lives_as_long_as_its_pipeline(champion, tiny_export):
    pipe = OrtVideoPipeline.from_pretrained("models:/dvdm/1", provider="cpu", threads=1, tracking_uri=champion)
    folder = pipe.export_dir
    assert (folder / "manifest.json").is_file() and folder != tiny_export
    assert pipe(first_frame(), "", seed=0).shape == (pipe.frames, pipe.height, pipe.width, 3)
    del pipe
    gc.collect()
    assert not folder.exists()
    shutil.rmtree(folder, ignore_errors=True)
