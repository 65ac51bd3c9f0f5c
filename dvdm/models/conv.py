"""`Conv3d`: `nn.Conv3d` that takes oneDNN's kernel for single-clip inference on CPU.

PyTorch's CPU convolution picks its native im2col kernel over oneDNN when the batch is 1 and the input is small
(N*C*T*H <= 20480: the ED-VDM block grid, e.g. 15x8x8 with 64-256 channels, always is). For the (1,3,3) and
(3,1,1) kernels of the (2+1)D UNet that kernel is the slow one: `benchmarks/conv_backend.py` times the whole
denoiser forward on the ED-VDM grid both ways (1.26x faster with oneDNN on 2 cores; no change where PyTorch
already picks oneDNN).

Only inference takes the oneDNN call (no autograd recording, float32, zero padding, eager mode): training,
tracing and `torch.compile` see a plain `nn.Conv3d`, and so does every other device. Parameters and
state-dict keys are those of `nn.Conv3d`.

ONNX export writes the factorised kernels as 2D convolutions (the same numbers): ONNX Runtime's CPU provider
has blocked NCHWc kernels for 2D convolutions only and runs 3D ones through im2col + GEMM. A spatial (1,k,k)
kernel becomes a Conv2d over the frames folded into the batch; a temporal (k,1,1) or pointwise kernel a
Conv2d over (T, H*W), which needs no transpose. `benchmarks/onnx_vs_torch.py` measures the graphs both ways.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _as_conv2d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor | None:
    """`conv(x)` written with a 2D convolution, or None when the kernel is not factorised."""
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = conv.kernel_size, conv.stride, conv.padding
    if conv.groups != 1 or conv.dilation != (1, 1, 1) or conv.padding_mode != "zeros":
        return None
    b, c, t, h, w = x.shape
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0:  # temporal or pointwise: (B, C, T, H*W)
        y = F.conv2d(x.reshape(b, c, t, h * w), conv.weight[..., 0], conv.bias, (st, 1), (pt, 0))
        return y.reshape(b, y.shape[1], y.shape[2], h, w)
    if kt == 1 and st == 1 and pt == 0:  # spatial: frames folded into the batch
        y = F.conv2d(x.transpose(1, 2).reshape(b * t, c, h, w), conv.weight[:, :, 0], conv.bias, (sh, sw),
                     (ph, pw))
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
    return None


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and not isinstance(self.padding, str):
            y = _as_conv2d(self, x)
            if y is not None:
                return y
        # tracing/export first: under tracing, reading the batch size would be recorded as a constant
        if (not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()
                and not torch.compiler.is_compiling()
                and x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and _onednn_available()):
            return torch.mkldnn_convolution(x.contiguous(), self.weight, self.bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super().forward(x)
