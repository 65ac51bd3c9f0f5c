"""The export folder as an MLflow pyfunc model: what `mlflow.pyfunc.load_model` and `mlflow models serve` run.

    model = mlflow.pyfunc.load_model("models:/dvdm@champion")
    out = model.predict(pd.DataFrame({"image": [png_bytes], "prompt": ["a red square moves slowly up"]}),
                        params={"seed": 1})
    Path("video.mp4").write_bytes(out["video"][0])

A registered version is an MLflow model whose `python_function` flavor loads through this module
(`loader_module`: no pickle to trust) from its data folder, the export itself (ONNX graphs, manifest.json,
model card). The torch-free `OrtVideoPipeline` runs it, under the same request checks as `dvdm serve`: the
upload decoder (formats, pixel count and aspect ratio checked before decoding) and the limits of
`ServeSettings` (its defaults, or `DVDM_SERVE_*` variables: provider, threads, max_steps, fps, ...).

The signature, one row per video:
- input `image` (binary: the bytes of a PNG, JPEG, WebP, GIF or BMP file) and `prompt` (string, optional;
  empty: unconditioned, as in `dvdm serve`);
- params `seed`, `steps`, `guidance`, `sampler` (defaults: 0 and the export's sampler) and `format` (mp4 | gif);
- output `video` (binary: the MP4 or GIF file).
Binary columns because MLflow's scoring server carries them as base64 strings in its JSON (`dataframe_split`
in, `predictions` out) and hands the model bytes: a video as an MP4 is a few kB, as a JSON array of pixel
values it would be ~100 times larger and play nowhere. `prompt` is a column, not a param, so one request can
carry several image/prompt pairs; the settings are params, shared by the request's rows.

`register_export` logs an export folder this way (a logged model of the run, with signature, input example,
pip requirements and this code) and registers it as a version of the registered model.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dvdm.tracking import registry
from dvdm.tracking.errors import TrackingError
from serving.encode import MEDIA_TYPES, encode_video
from serving.errors import InvalidRequest
from serving.settings import ServeSettings
from serving.upload import IMAGE_FORMATS, decode_image

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import Model, ModelSignature

    from dvdm.runtime.pipeline import OrtVideoPipeline

LOADER_MODULE = __name__
EXPORT_FOLDER = "export"  # the data folder inside the MLflow model: data/export
EXAMPLE_PROMPT = "a red square moves slowly to the right"
# what the model's code imports (sys.modules after loading and predicting), as distributions for pip
REQUIREMENTS = ("numpy", "pandas", "pillow", "av", "tokenizers")
ONNXRUNTIME = ("onnxruntime", "onnxruntime-gpu")  # whichever is installed: both own the onnxruntime package


def bad_input(message: str) -> Exception:
    """The error MLflow reports as the caller's fault: HTTP 400 from `mlflow models serve`, with `message`."""
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


class VideoModel:
    """The loaded model: `predict(DataFrame[image, prompt], params) -> DataFrame[video]`."""

    def __init__(self, pipeline: OrtVideoPipeline, settings: ServeSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings

    def predict(self, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        params = dict(params or {})
        try:
            self.check_params(params)
        except InvalidRequest as exc:
            raise bad_input(str(exc)) from None
        prompts = model_input["prompt"] if "prompt" in model_input.columns else [""] * len(model_input)
        videos = []
        for row, (image, prompt) in enumerate(zip(model_input["image"], prompts, strict=True)):
            try:
                video = self.generate(image, "" if _missing(prompt) else prompt, params)
            except InvalidRequest as exc:
                raise bad_input(f"row {row}: {exc}" if len(model_input) > 1 else str(exc)) from None
            videos.append(encode_video(video, params.get("format") or "mp4", self.settings.fps))
        return pd.DataFrame({"video": videos})

    def check_params(self, params: Mapping[str, Any]) -> None:
        """InvalidRequest for a format this model cannot write, or steps/guidance past the service's limits
        (the pipeline checks the rest: seed, sampler, steps within the model's timesteps)."""
        fmt, steps, guidance = params.get("format") or "mp4", params.get("steps"), params.get("guidance")
        if fmt not in MEDIA_TYPES:
            raise InvalidRequest(f"format must be one of {', '.join(MEDIA_TYPES)}, got {fmt!r}")
        limit = min(self.settings.max_steps, self.pipeline.num_timesteps)  # as dvdm serve's step_limit
        if steps is not None and not 1 <= steps <= limit:
            raise InvalidRequest(f"steps must be in 1..{limit} for this model, got {steps}")
        if guidance is not None and guidance > self.settings.max_guidance:
            raise InvalidRequest(f"guidance must be at most {self.settings.max_guidance}, got {guidance}")

    def generate(self, image: Any, prompt: Any, params: Mapping[str, Any]) -> np.ndarray:
        """One video, uint8 (T, H, W, 3); InvalidRequest names what is wrong with the image or the prompt."""
        if not isinstance(prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > self.settings.max_prompt_chars:
            raise InvalidRequest(f"prompt is {len(prompt)} characters, the limit is {self.settings.max_prompt_chars}")
        frame = decode_image(image_bytes(image), self.settings.max_pixels, self.settings.max_aspect_ratio)
        return self.pipeline.generate(frame, prompt, steps=params.get("steps"), guidance=params.get("guidance"),
                                      seed=params.get("seed", 0), sampler=params.get("sampler"))


def _missing(value: Any) -> bool:
    """A cell left empty: None, NaN or pandas' NA (a row without a prompt in a request with prompts)."""
    import pandas as pd

    return not isinstance(value, str) and np.ndim(value) == 0 and bool(pd.isna(value))


def image_bytes(value: Any) -> bytes:
    """The image file's bytes. MLflow's scoring server base64-decodes the binary column of `dataframe_split`
    and `dataframe_records` requests, but hands over the base64 text itself for `inputs` and `instances`
    requests: text that is wholly base64 is decoded (an image file never is: its header has bytes outside
    the base64 alphabet)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"image must be the bytes of a {', '.join(IMAGE_FORMATS)} file, got "
                             f"{type(value).__name__}")
    value = bytes(value)
    try:
        return base64.b64decode(b"".join(value.split()), validate=True) or value
    except binascii.Error:
        return value


def _load_pyfunc(data_path: str, model_config: Mapping[str, Any] | None = None) -> VideoModel:
    """MLflow's loader hook: the export in `data_path` on the provider and threads `DVDM_SERVE_*` set."""
    from dvdm.runtime.pipeline import OrtVideoPipeline

    settings = ServeSettings.from_env()
    pipeline = OrtVideoPipeline.from_export(data_path, provider=settings.provider, threads=settings.session_threads)
    return VideoModel(pipeline, settings)


# ---------------------------------------------------------------------------------------------- writing


def signature(manifest: Mapping[str, Any]) -> ModelSignature:
    """Inputs `image` (binary) and `prompt` (string, optional), output `video` (binary); params with the
    export's sampler settings as defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    sampler = manifest["sampler"]
    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image"), ColSpec("string", "prompt", required=False)]),
        outputs=Schema([ColSpec("binary", "video")]),
        params=ParamSchema([ParamSpec("seed", "long", 0), ParamSpec("steps", "long", int(sampler["steps"])),
                            ParamSpec("guidance", "double", float(sampler["guidance"])),
                            ParamSpec("sampler", "string", str(sampler.get("name", "ddim"))),
                            ParamSpec("format", "string", "mp4")]))


def input_example(manifest: Mapping[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row: a red square on grey at the model's size (PNG), the prompt saying where it goes; seed 0."""
    import io

    import pandas as pd
    from PIL import Image

    height, width = int(manifest["clip"]["height"]), int(manifest["clip"]["width"])
    frame = np.full((height, width, 3), 127, np.uint8)
    side = max(1, min(height, width) // 4)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top:top + side, left:left + side] = (220, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    prompt = EXAMPLE_PROMPT if manifest.get("text") is not None else ""
    return pd.DataFrame({"image": [buf.getvalue()], "prompt": [prompt]}), {"seed": 0}


def pip_requirements() -> list[str]:
    """The distributions the model's code needs, pinned to this environment's versions (MLflow adds itself)."""
    wanted = list(REQUIREMENTS) + [next((d for d in ONNXRUNTIME if _installed(d)), ONNXRUNTIME[0])]
    return [f"{d}=={importlib.metadata.version(d)}" if _installed(d) else d for d in wanted]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def code_paths() -> list[str]:
    """The `dvdm` and `serving` packages (MLflow copies them without caches): the model runs with the code it
    was logged with wherever it is loaded."""
    import dvdm

    return [str(Path(dvdm.__file__).parent), str(Path(__file__).parent)]


def save_model(path: str | Path, export: str | Path, mlflow_model: Model | None = None) -> None:
    """Write the MLflow model of export folder `export` to `path` (which must not exist or be empty):
    MLmodel (pyfunc flavor, signature), input example, pip requirements, code and the export as data.
    The export is verified first (every file's sha256): a corrupt export is never packaged."""
    import mlflow.pyfunc

    from dvdm.runtime.manifest import load_manifest

    export = Path(export)
    manifest = load_manifest(export, verify=True)
    with tempfile.TemporaryDirectory(prefix="dvdm-pyfunc-") as tmp, warnings.catch_warnings():
        # MLflow 3.17's input example code compares columns with a range, which pandas 3 deprecates
        warnings.filterwarnings("ignore", message="Operation with range is deprecated")
        data = Path(tmp) / EXPORT_FOLDER  # MLflow keeps the data folder's name: data/export
        data.symlink_to(export.resolve(), target_is_directory=True)
        mlflow.pyfunc.save_model(str(path), loader_module=LOADER_MODULE, data_path=str(data),
                                 code_paths=code_paths(), mlflow_model=mlflow_model,
                                 signature=signature(manifest), input_example=input_example(manifest),
                                 pip_requirements=pip_requirements())


def register_export(client: MlflowClient, run_id: str, folder: str | Path, *, name: str = registry.MODEL_NAME,
                    metrics: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                    description: str | None = None, alias: str | None = registry.CHALLENGER) -> ModelVersion:
    """Log export folder `folder` as run `run_id`'s MLflow model and register it as a new version of `name`
    (`dvdm.tracking.registry.register_version`: metric tags, `alias`). A folder without a manifest (a torch
    checkpoint) is logged as plain files, which only `dvdm` itself reads. Safe to retry: the run's model and
    its version are found again, not duplicated."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise TrackingError(f"{folder}: no exported model folder to register (run dvdm export first)")
    if (folder / "manifest.json").is_file():
        def write(path: Path, mlflow_model: Model) -> None:
            save_model(path, folder, mlflow_model)
        model_type = "onnx-export"
    else:
        def write(path: Path, mlflow_model: Model) -> None:
            shutil.copytree(folder, path)
        model_type = "files"
    logged = registry.log_model(client, run_id, write, model_type=model_type)
    return registry.register_version(client, logged.model_id, name=name, metrics=metrics, tags=tags,
                                     description=description, alias=alias)
