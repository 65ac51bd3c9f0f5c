"""Inference: first frame + prompt -> video, composing space + text encoder + denoiser + sampler.

`VideoPipeline.from_checkpoint(path)` rebuilds everything a training run saved (the EMA weights, the
space with its normalisation statistics and, for ED-VDM, the residual autoencoder), so a checkpoint is
all a user needs. Seeds are per sample: a seed reproduces its video whatever else is in the batch.

    pipe = VideoPipeline.from_pretrained("models/diffusion")       # a training run folder or its checkpoint/
    video = pipe("first.png", "a red circle moves up", seed=0)     # (T, H, W, 3) uint8; PIL image or array too
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvdm.diffusion import DDIMSampler, DDPMSampler, DPMSolverSampler, GaussianDiffusion, batched_guidance
from dvdm.errors import ConfigError
from dvdm.models import UNet3D, UNetConfig
from dvdm.model_ref import checkpoint_folder
from dvdm.runtime.errors import InvalidRequest
from dvdm.runtime.first_frame import fit_first_frame, is_one_image
from dvdm.runtime.image import IMAGE_DIVIDE, IMAGE_SUBTRACT
from dvdm.spaces import TargetSpace, space_from_state
from dvdm.spaces.ae_codec import autoencoder_codec
from dvdm.train.checkpoint import load_checkpoint
from dvdm.train.device import autocast, inference_dtype, select_device

SAMPLERS = ("ddim", "ddpm", "dpm++")


def image_to_tensor(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3), an array or a tensor -> float (B, 3, H, W) in [-1, 1]."""
    return torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float() / IMAGE_DIVIDE - IMAGE_SUBTRACT


@dataclass
class VideoPipeline:
    model: UNet3D
    space: TargetSpace
    diffusion: GaussianDiffusion
    frames: int
    height: int
    width: int
    text_encoder: Any = None
    device: torch.device = torch.device("cpu")
    # fp32 by default; bf16 (or fp16 on GPU) runs the denoiser and the residual decoder under autocast while
    # the sampler's own arithmetic stays float32
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self._autocast_dtype = inference_dtype(self.device, self.precision)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", weights: str = "ema",
                        precision: str = "fp32") -> VideoPipeline:
        """Load a train-diffusion checkpoint folder, or the training run folder that holds it."""
        dev = select_device(device)
        inference_dtype(dev, precision)  # a bad precision fails before the checkpoint is read
        ckpt = load_checkpoint(checkpoint_folder(path), kind="dvdm-diffusion")
        cfg = ckpt.config
        # a space built around the residual autoencoder saved it with the denoiser
        codec = autoencoder_codec(cfg["autoencoder"], ckpt.weights("autoencoder"), dev) \
            if cfg.get("autoencoder") else None
        space = space_from_state(cfg["space"], codec=codec)
        model = UNet3D(UNetConfig.from_dict(cfg["unet"]))
        model.load_state_dict(ckpt.weights(weights))
        model.to(dev).eval()
        text_encoder = None
        if cfg["unet"].get("text_dim", 0):
            from dvdm.models import TextEncoder

            text_encoder = TextEncoder(device=dev)
        clip = cfg["clip"]
        return cls(model, space, GaussianDiffusion.from_config(cfg["diffusion"]), clip["frames"], clip["height"],
                   clip["width"], text_encoder, dev, precision)

    @classmethod
    def from_pretrained(cls, model: str | Path, *, device: str = "auto", weights: str = "ema",
                        precision: str = "fp32", tracking_uri: str | None = None) -> VideoPipeline:
        """Load a training run folder, its checkpoint folder, or a registered version that holds a checkpoint
        (`models:/<name>@<alias>`, `models:/<name>/<version>`; from `tracking_uri`, else $MLFLOW_TRACKING_URI,
        else the embedded store of ./work), as `from_checkpoint` does. The main job registers the ONNX export,
        which torch cannot load: `dvdm.runtime.pipeline.OrtVideoPipeline.from_pretrained` runs that."""
        from dvdm.model_ref import CHECKPOINT, ModelRefError, fetch_model

        with fetch_model(model, tracking_uri=tracking_uri) as found:  # a download is deleted once loaded
            if found.kind != CHECKPOINT:
                raise ModelRefError(f"{found.label}: an ONNX export, which the torch pipeline cannot load; run it "
                                    f"with dvdm.runtime.pipeline.OrtVideoPipeline.from_pretrained, or give the "
                                    f"training run folder it was exported from (e.g. models/diffusion)")
            return cls.from_checkpoint(found.folder, device=device, weights=weights, precision=precision)

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def preprocess(self, image: Any) -> np.ndarray:
        """Any uint8 (H, W, 3) image, PIL image or image file -> uint8 (H, W, 3) at the model's size, resized as
        the model's export would (`dvdm.runtime.first_frame`)."""
        return fit_first_frame(image, self.height, self.width)

    def encode_text(self, prompts: list[str]) -> torch.Tensor | None:
        if self.text_encoder is None:
            return None
        return self.text_encoder.encode(list(prompts)).to(self.device)

    @torch.inference_mode()
    def sample_targets(self, first_frames: np.ndarray, prompts: list[str] | None, *, steps: int = 50,
                       guidance: float = 1.0, seeds: list[int] | None = None, sampler: str = "ddim",
                       text: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised targets (B, C, T-1, h, w) for a batch of first frames (uint8 (B, H, W, 3))."""
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        b = len(first_frames)
        seeds = list(range(b)) if seeds is None else list(seeds)
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for {b} samples")
        image = image_to_tensor(first_frames, self.device)
        if text is None and self.text_encoder is not None:
            text = self.encode_text(prompts if prompts is not None else [""] * b)
        shape = (b, *self.space.target_shape(self.frames, self.height, self.width))
        # The first frame is the same at every step: encode it once, not once per denoising step.
        cond: dict[str, torch.Tensor] = {"image_features": self.model.encode_image(image, shape[-2:])}
        if text is not None:
            cond["text"] = text
        use_guidance = text is not None and guidance != 1.0
        drop_off = torch.zeros(b, dtype=torch.bool, device=self.device)

        def model_fn(x, t):
            tt = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long) if not torch.is_tensor(t) \
                else t.to(self.device).expand(x.shape[0]) if t.ndim == 0 else t
            if use_guidance:
                out = batched_guidance(self.model, x, tt, {**cond, "drop_text": drop_off},
                                       {**cond, "drop_text": ~drop_off}, guidance)
            else:
                out = self.model(x, tt, **cond, drop_text=drop_off if text is not None else None)
            return out.float()  # the sampler's arithmetic stays float32 under autocast

        s = {"ddim": DDIMSampler, "ddpm": DDPMSampler, "dpm++": DPMSolverSampler}[sampler](self.diffusion)
        gens = [torch.Generator().manual_seed(int(sd)) for sd in seeds]
        # one autocast region for the whole loop: its cache of low-precision weights lives as long as it does
        with autocast(self.device, self._autocast_dtype):
            return s.sample(model_fn, shape, num_steps=steps, generator=gens, device=self.device).float()

    def decode(self, targets: torch.Tensor, first_frames: np.ndarray) -> np.ndarray:
        raw = self.space.denormalize(targets.float().cpu()).numpy()
        with autocast(self.device, self._autocast_dtype):
            return np.stack([self.space.decode(raw[i], first_frames[i]) for i in range(len(first_frames))])

    def __call__(self, first_frames: Any, prompts: str | list[str] | None = None, *, steps: int = 50,
                 guidance: float = 1.0, seeds: list[int] | None = None, sampler: str = "ddim",
                 seed: int | None = None) -> np.ndarray:
        """uint8 first frames (B, H, W, 3) at the model's size -> uint8 videos (B, T, H, W, 3); a list of images
        of any size (arrays, PIL images, paths) is resized first. One image (and one prompt, one `seed`) ->
        one video (T, H, W, 3), as `generate`."""
        if is_one_image(first_frames):
            if seeds is not None:
                raise InvalidRequest("one image takes seed=, not seeds= (one per batch sample)")
            return self.generate(first_frames, "" if prompts is None else prompts, steps=steps, guidance=guidance,
                                 seed=0 if seed is None else seed, sampler=sampler)
        if seed is not None:
            raise InvalidRequest("seed= is for one image; a batch takes seeds=[...], one per sample")
        if isinstance(prompts, str):
            raise InvalidRequest("a batch takes a list of prompts, one per image")
        if isinstance(first_frames, (list, tuple)):
            first_frames = np.stack([self.preprocess(image) for image in first_frames])
        started = time.perf_counter()
        targets = self.sample_targets(first_frames, prompts, steps=steps, guidance=guidance, seeds=seeds,
                                      sampler=sampler)
        videos = self.decode(targets, first_frames)
        self.last_seconds = time.perf_counter() - started
        return videos

    def generate(self, image: Any, prompt: str = "", *, steps: int = 50, guidance: float = 1.0, seed: int = 0,
                 sampler: str = "ddim") -> np.ndarray:
        """One image of any size (uint8 (H, W, 3), PIL image or file) + prompt -> uint8 video (T, H, W, 3) at the
        model's size (the image resized as `preprocess` says)."""
        if not isinstance(prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}")
        return self(self.preprocess(image)[None], [prompt], steps=steps, guidance=guidance, seeds=[int(seed)],
                    sampler=sampler)[0]
