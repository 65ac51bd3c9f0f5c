"""`OrtVideoPipeline`: first frame + prompt -> video from an export folder, with numpy and onnxruntime only.

    pipe = OrtVideoPipeline.from_export("models/export")          # verifies every file's sha256
    video = pipe.generate(image, "a red circle moves up", steps=25, guidance=1.0, seed=0)  # (T, H, W, 3)
    pipe = OrtVideoPipeline.from_pretrained("models:/dvdm@champion")  # or an export folder
    video = pipe("first.png", "a red circle moves up", seed=0)     # a path, PIL image or uint8 array

The same computation as the torch `dvdm.pipeline.VideoPipeline`: the image is scaled to [-1, 1] (NCHW) and
encoded once per request by the `image_encoder` graph; the prompt by the `text_encoder` graph; DDIM runs in
numpy and calls the `denoiser` graph once per step (on a doubled batch, conditional then unconditional
with the learned null-text embedding, when classifier-free guidance is on); the target is denormalised
and decoded as the manifest's `decode` block says (`dvdm.runtime.decode`).

Noise: sample i starts from `np.random.default_rng(seeds[i])` standard normal noise of the target shape
(and, with eta > 0, draws its per-step noise from `default_rng([seeds[i], 1])`), so a seed reproduces its
video whatever else is in the batch. This is *not* the torch pipeline's noise
for the same seed (torch's CPU generator is not reproduced in numpy); pass `noise=` to start from given
noise (the export's parity check passes torch's).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.runtime.ddim import DDIM, SOLVERS
from dvdm.runtime.decode import check_spec, decode_target, needs_residual_decoder
from dvdm.runtime.errors import InvalidRequest, ManifestError, ProviderError
from dvdm.runtime.first_frame import RESIZE_POLICIES, fit_first_frame, is_one_image
from dvdm.runtime.guidance import check_guidance, guide
from dvdm.runtime.manifest import load_manifest
from dvdm.runtime.normalize import Normalizer
from dvdm.runtime.batch_sessions import BatchSizedSessions
from dvdm.runtime.thread_choice import AUTO, fastest_denoiser
from dvdm.runtime.sessions import ProviderChoice, choose_provider, create_session

log = logging.getLogger("dvdm.runtime.pipeline")


class OrtVideoPipeline:
    """Inference from an export folder. Thread-safe: sessions are shared, per-call state is local."""

    def __init__(self, export_dir: Path, manifest: dict[str, Any], sessions: dict[str, Any],
                 choice: ProviderChoice, text_encoder: Any = None) -> None:
        self.export_dir = export_dir
        self.manifest = manifest
        self.sessions = sessions
        self.choice = choice
        self.text_encoder = text_encoder
        clip = manifest["clip"]
        self.frames, self.height, self.width = int(clip["frames"]), int(clip["height"]), int(clip["width"])
        self.target_shape = tuple(int(v) for v in manifest["target_shape"])
        norm = manifest["normalization"]
        self.normalizer = Normalizer(norm["mean"], norm["std"])
        if len(norm["mean"]) != self.target_shape[0] or len(norm["std"]) != self.target_shape[0]:
            raise ManifestError(f"{export_dir}: normalization has {len(norm['mean'])} channels, the target "
                                f"{self.target_shape[0]}")
        diffusion = manifest["diffusion"]
        self.ddim = DDIM(diffusion["alphas_cumprod"], diffusion["prediction"])
        self.defaults = dict(manifest["sampler"])
        if self.defaults.get("name", "ddim") not in SOLVERS:
            raise ManifestError(f"{export_dir}: sampler.name must be one of {SOLVERS}, got "
                                f"{self.defaults.get('name')!r}")
        self.image = manifest["image"]
        if self.image.get("resize") not in RESIZE_POLICIES:
            raise ManifestError(f"{export_dir}: image.resize must be one of {RESIZE_POLICIES}")
        if self.image["resize"] == "short_side_center_crop" and self.height != self.width:
            raise ManifestError(f"{export_dir}: image.resize short_side_center_crop needs a square model size")
        self.decode_spec = manifest["decode"]
        check_spec(self.decode_spec)
        text = manifest["text"]
        self._null_text = None if text is None else np.asarray(text["null_embedding"], np.float32)[None]
        self.last_seconds = 0.0
        self.threads: int | None = None            # intra-op threads per session (None: dvdm.runtime.cpus)
        self.thread_timings: dict[int, float] = {}  # seconds per denoiser call of each count timed ("auto")
        self.download: Any = None  # from_pretrained: the LocalModel whose temporary folder holds a registry version

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_export(cls, export_dir: str | os.PathLike[str], *, provider: str = "auto",
                    threads: int | str | None = None, verify: bool = True,
                    choice: ProviderChoice | None = None) -> OrtVideoPipeline:
        """Load an export folder: check the manifest and every file's sha256 (refusing a tampered folder
        with ExportIntegrityError), pick the provider (`auto`: CUDA if it really works, else CPU) and open
        one session per graph. `threads`: intra-op threads per session (None: the CPUs this process may
        use, `dvdm.runtime.cpus`; "auto": on CPU, whichever of that and one thread runs the denoiser
        faster, timed now: `dvdm.runtime.thread_choice`)."""
        root = Path(export_dir)
        manifest = load_manifest(root, verify=verify)
        choice = choice or choose_provider(provider)
        if threads is not None and threads != AUTO and not (isinstance(threads, int) and threads >= 1):
            raise ProviderError(f"threads must be an integer >= 1, {AUTO!r} or None, got {threads!r}")
        denoiser, timings = None, {}
        if threads == AUTO:
            graph = manifest["graphs"].get("denoiser", {}).get("file")
            if choice.name == "cpu" and graph:
                guided = manifest["text"] is not None and float(manifest["sampler"].get("guidance", 1.0)) != 1.0
                threads, denoiser, timings = fastest_denoiser(root / graph, choice, 2 if guided else 1)
            else:
                threads = None
        # the denoiser runs once per sampling step: a session per batch size (BatchSizedSessions)
        sessions = {name: (denoiser or BatchSizedSessions(root / spec["file"], choice, threads))
                    if name == "denoiser" else create_session(root / spec["file"], choice, threads)
                    for name, spec in manifest["graphs"].items()}
        for required in ("denoiser", "image_encoder"):
            if required not in sessions:
                raise ManifestError(f"{root}: manifest has no {required} graph")
        wanted = {"x_t", "t", "image_features"} | ({"text"} if manifest["text"] is not None else set())
        found = {i.name for i in sessions["denoiser"].get_inputs()}
        if found != wanted:
            raise ManifestError(f"{root}: the denoiser graph takes {sorted(found)}, this serving expects "
                                f"{sorted(wanted)} for a manifest of format version {manifest['format_version']}")
        text_encoder = None
        if manifest["text"] is not None:
            from dvdm.runtime.text import OrtTextEncoder

            if "text_encoder" not in sessions:
                raise ManifestError(f"{root}: the model is text-conditioned but the export has no text_encoder")
            text_encoder = OrtTextEncoder(root / manifest["text"]["tokenizer"], sessions["text_encoder"],
                                          manifest["text"])
        pipe = cls(root, manifest, sessions, choice, text_encoder)
        pipe.threads, pipe.thread_timings = threads, timings
        log.info("serving: loaded %s (%s, %s) on %s", root, manifest["space"]["name"],
                 "x".join(map(str, (pipe.frames, pipe.height, pipe.width))), choice.provider)
        return pipe

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike[str], *, provider: str = "auto", threads: int | str | None = None,
                        tracking_uri: str | None = None) -> OrtVideoPipeline:
        """Load an export folder or a registered version (`models:/dvdm@champion`, `models:/dvdm/3`, from
        `tracking_uri`, else $MLFLOW_TRACKING_URI, else the embedded store of ./work), as `from_export` does.
        A registry version is downloaded into a temporary folder that lives as long as the pipeline."""
        from dvdm.model_ref import EXPORT, ModelRefError, fetch_model

        found = fetch_model(model, tracking_uri=tracking_uri)
        try:
            if found.kind != EXPORT:
                raise ModelRefError(f"{found.label}: a training checkpoint, not an export; load it with "
                                    f"dvdm.pipeline.VideoPipeline.from_pretrained (torch), or export it first "
                                    f"(dvdm export --model {model} --out DIR)")
            pipe = cls.from_export(found.folder, provider=provider, threads=threads)
        except BaseException:
            found.close()
            raise
        pipe.download = found  # a downloaded version's folder (export_dir) lives as long as the pipeline
        return pipe

    # ------------------------------------------------------------------ properties
    @property
    def provider(self) -> str:
        return self.choice.provider

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None

    @property
    def num_timesteps(self) -> int:
        return self.ddim.num_timesteps

    def info(self) -> dict[str, Any]:
        """What a client may want to know about the loaded model (for /v1/model)."""
        m = self.manifest
        return {"space": m["space"]["name"], "frames": self.frames, "height": self.height, "width": self.width,
                "text": self.has_text, "num_timesteps": self.num_timesteps, "sampler": self.defaults,
                "provider": self.provider, "provider_reason": self.choice.reason, "source": m.get("source"),
                "dvdm_version": m.get("dvdm_version"), "exported_at": m.get("exported_at"),
                "threads": self.threads}

    # ------------------------------------------------------------------ inputs
    def preprocess(self, image: Any) -> np.ndarray:
        """Any uint8 (H, W, 3) image, PIL image or image file -> uint8 (H, W, 3) at the model's size, resized as
        the manifest says (`dvdm.runtime.first_frame`). InvalidRequest for an image more than
        `dvdm.video.transforms.MAX_ASPECT_RATIO` times as elongated as the model."""
        return fit_first_frame(image, self.height, self.width, self.image["resize"],
                               self.image.get("resize_mode", "area"))

    def _check_frames(self, first_frames: np.ndarray) -> np.ndarray:
        first_frames = np.asarray(first_frames)
        want = (self.height, self.width, 3)
        if first_frames.dtype != np.uint8 or first_frames.ndim != 4 or first_frames.shape[1:] != want \
                or len(first_frames) < 1:
            raise InvalidRequest(f"first frames must be uint8 (B, {', '.join(map(str, want))}), got "
                                 f"{first_frames.dtype} {first_frames.shape}; use preprocess() for other sizes")
        return first_frames

    def image_tensor(self, first_frames: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W): x / divide - subtract (to [-1, 1]), as the manifest says."""
        x = first_frames.transpose(0, 3, 1, 2).astype(np.float32)
        return x / np.float32(self.image["divide"]) - np.float32(self.image["subtract"])

    def encode_image(self, first_frames: np.ndarray) -> np.ndarray:
        session = self.sessions["image_encoder"]
        return session.run(None, {session.get_inputs()[0].name: self.image_tensor(first_frames)})[0]

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray | None:
        if self.text_encoder is None:
            return None
        return self.text_encoder.encode(prompts)

    # ------------------------------------------------------------------ sampling
    def initial_noise(self, seeds: Sequence[int]) -> np.ndarray:
        """Standard normal x_{T-1} (B, *target_shape), sample i from `default_rng(seeds[i])`."""
        return np.stack([np.random.default_rng(int(s)).standard_normal(self.target_shape, dtype=np.float32)
                         for s in seeds])

    def _denoiser(self, features: np.ndarray, text: np.ndarray | None, guidance: float
                  ) -> Callable[[np.ndarray, int], np.ndarray]:
        session = self.sessions["denoiser"]
        b = len(features)
        if text is None:
            def run(x, t):
                return session.run(None, {"x_t": x, "t": np.full(len(x), t, np.int64), "image_features": features})[0]
            return run
        null = np.repeat(self._null_text, b, axis=0)
        if guidance == 1.0:
            feeds_text, doubled = text, False
        elif guidance == 0.0:
            feeds_text, doubled = null, False
        else:
            feeds_text, doubled = np.concatenate([text, null]), True
        feats = np.concatenate([features, features]) if doubled else features

        def run_text(x, t):
            xx = np.concatenate([x, x]) if doubled else x
            out = session.run(None, {"x_t": xx, "t": np.full(len(xx), t, np.int64), "image_features": feats,
                                     "text": feeds_text})[0]
            if not doubled:
                return out
            return guide(out[:b], out[b:], guidance)
        return run_text

    def sample_targets(self, first_frames: np.ndarray, prompts: Sequence[str] | None = None, *,
                       steps: int | None = None, guidance: float | None = None, eta: float | None = None,
                       seeds: Sequence[int] | None = None, noise: np.ndarray | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None, sampler: str | None = None) -> np.ndarray:
        """Normalised targets (B, *target_shape) for uint8 first frames (B, H, W, 3) at the model's size.
        `should_stop` is asked before each denoising step; True ends the call with GenerationCancelled.
        None for steps, guidance, eta or sampler (ddim | dpm++): the manifest's default."""
        first_frames = self._check_frames(first_frames)
        b = len(first_frames)
        steps = int(self.defaults["steps"]) if steps is None else steps
        guidance = check_guidance(self.defaults["guidance"] if guidance is None else guidance)
        eta = float(self.defaults["eta"]) if eta is None else eta
        seeds = list(range(b)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != b:
            raise InvalidRequest(f"{len(seeds)} seeds for {b} samples")
        if prompts is not None and len(prompts) != b:
            raise InvalidRequest(f"{len(prompts)} prompts for {b} samples")
        shape = (b, *self.target_shape)
        if noise is None:
            noise = self.initial_noise(seeds)
        elif tuple(noise.shape) != shape:
            raise InvalidRequest(f"noise shape {tuple(noise.shape)} != {shape}")
        text = self.encode_text(list(prompts) if prompts is not None else [""] * b)
        features = self.encode_image(first_frames)
        rngs = [np.random.default_rng([int(s), 1]) for s in seeds] if eta and eta > 0 else None
        solver = str(self.defaults.get("name", "ddim")) if sampler is None else sampler
        return self.ddim.sample(self._denoiser(features, text, guidance), noise, steps, eta, rngs, progress,
                                should_stop, solver)

    # ------------------------------------------------------------------ decoding
    def _residual_decoder(self, latent: np.ndarray) -> np.ndarray:
        session = self.sessions[self.decode_spec["residual"]["graph"]]
        return session.run(None, {session.get_inputs()[0].name: latent.astype(np.float32, copy=False)})[0]

    def decode(self, targets: np.ndarray, first_frames: np.ndarray) -> np.ndarray:
        """Normalised targets (B, ...) + uint8 first frames -> uint8 videos (B, T, H, W, 3)."""
        raw = self.normalizer.denormalize(np.asarray(targets, np.float32))
        residual = self._residual_decoder if needs_residual_decoder(self.decode_spec) else None
        return np.stack([decode_target(self.decode_spec, raw[i], first_frames[i], residual)
                         for i in range(len(first_frames))])

    def __call__(self, first_frames: Any, prompts: str | Sequence[str] | None = None, *, steps: int | None = None,
                 guidance: float | None = None, eta: float | None = None, seeds: Sequence[int] | None = None,
                 noise: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, sampler: str | None = None,
                 seed: int | None = None) -> np.ndarray:
        """uint8 first frames (B, H, W, 3) at the model's size -> uint8 videos (B, T, H, W, 3); a list of images
        of any size (arrays, PIL images, paths) is resized first. One image (and one prompt, one `seed`) ->
        one video (T, H, W, 3), as `generate`."""
        if is_one_image(first_frames):
            if seeds is not None or noise is not None:
                raise InvalidRequest("one image takes seed=, not seeds= or noise= (those are per batch sample)")
            return self.generate(first_frames, "" if prompts is None else prompts, steps=steps, guidance=guidance,
                                 eta=eta, seed=0 if seed is None else seed, progress=progress,
                                 should_stop=should_stop, sampler=sampler)
        if seed is not None:
            raise InvalidRequest("seed= is for one image; a batch takes seeds=[...], one per sample")
        if isinstance(first_frames, (list, tuple)):
            first_frames = np.stack([self.preprocess(image) for image in first_frames])
        started = time.perf_counter()
        targets = self.sample_targets(first_frames, prompts, steps=steps, guidance=guidance, eta=eta, seeds=seeds,
                                      noise=noise, progress=progress, should_stop=should_stop, sampler=sampler)
        videos = self.decode(targets, first_frames)
        self.last_seconds = time.perf_counter() - started
        return videos

    def generate(self, image: Any, prompt: str = "", *, steps: int | None = None,
                 guidance: float | None = None, eta: float | None = None, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, sampler: str | None = None) -> np.ndarray:
        """One request: any-size image (uint8 (H, W, 3), PIL image or file) + prompt -> uint8 video (T, H, W, 3) at
        the model's size (the image is resized/cropped as `preprocess` says). `should_stop`: asked between denoising
        steps; True abandons the request with GenerationCancelled (e.g. its client hung up)."""
        if not isinstance(prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 63:
            raise InvalidRequest(f"seed must be an integer in [0, 2**63), got {seed!r}")
        frame = self.preprocess(image)
        return self(frame[None], [prompt], steps=steps, guidance=guidance, eta=eta, seeds=[int(seed)],
                    progress=progress, should_stop=should_stop, sampler=sampler)[0]
