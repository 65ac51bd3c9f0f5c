"""`Conv3d`: `nn.Conv3d` that takes oneDNN's kernel for single-clip inference on CPU.

PyTorch's CPU convolution picks its native im2col kernel over oneDNN when the batch is 1 and the input is small
(N*C*T*H <= 20480: the ED-VDM block grid, e.g. 15x8x8 with 64-256 channels, always is). For the (1,3,3) and
(3,1,1) kernels of the (2+1)D UNet that kernel is the slow one: `benchmarks/conv_backend.py` times the whole
denoiser forward on the ED-VDM grid both ways (1.26x faster with oneDNN on 2 cores; no change where PyTorch
already picks oneDNN).

Only inference takes the oneDNN call (no autograd recording, float32, zero padding, eager mode): training,
tracing, ONNX export and `torch.compile` see a plain `nn.Conv3d`, and so does every other device. Parameters and
state-dict keys are those of `nn.Conv3d`.
"""

from __future__ import annotations

import torch
from torch import nn


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
