"""`dvdm.models.conv.Conv3d`: the oneDNN route for batch-1 CPU inference gives nn.Conv3d's numbers and is
taken only where it should be (not for training, export or batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dvdm.models.conv import Conv3d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def _pair(kernel, padding, cin=16, cout=24):
    torch.manual_seed(0)
    ours = Conv3d(cin, cout, kernel, padding=padding)
    ref = nn.Conv3d(cin, cout, kernel, padding=padding)
    ref.load_state_dict(ours.state_dict())  # same parameters, same state-dict keys
    return ours, ref


@pytest.fixture
def onednn_calls(monkeypatch):
    calls = []
    real = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: (calls.append(a[0].shape), real(*a))[1])
    return calls


@pytest.mark.parametrize("kernel,padding", [((1, 3, 3), (0, 1, 1)), ((3, 1, 1), (1, 0, 0)), (1, 0)])
def test_batch1_inference_takes_onednn_and_matches_nn_conv3d(kernel, padding, onednn_calls):
    ours, ref = _pair(kernel, padding)
    x = torch.randn(1, 16, 5, 8, 8)
    with torch.inference_mode():
        got, want = ours(x), ref(x)
    assert onednn_calls == [x.shape]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)
    assert len(onednn_calls) == 2


def test_training_batches_and_export_use_the_plain_conv(onednn_calls):
    ours, ref = _pair((1, 3, 3), (0, 1, 1))
    x = torch.randn(1, 16, 5, 8, 8)
    out = ours(x)                                      # grad enabled, parameters require grad: training
    out.square().mean().backward()
    assert ours.weight.grad is not None
    with torch.inference_mode():
        ours(torch.randn(2, 16, 5, 8, 8))              # a batch: PyTorch already picks oneDNN itself
    assert onednn_calls == []
    with torch.inference_mode():
        ours.double()(torch.randn(1, 16, 5, 8, 8, dtype=torch.float64))  # not float32
    assert onednn_calls == []


@pytest.mark.parametrize("kernel,stride,padding,conv_dims", [
    ((1, 3, 3), 1, (0, 1, 1), 2), ((1, 3, 3), (1, 2, 2), (0, 1, 1), 2), ((3, 1, 1), 1, (1, 0, 0), 2),
    (1, 1, 0, 2), ((3, 3, 3), 1, 1, 3)])
def test_onnx_export_writes_factorised_kernels_as_2d_convs_with_the_same_numbers(
        tmp_path, onednn_calls, kernel, stride, padding, conv_dims):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    torch.manual_seed(0)
    ours = Conv3d(16, 24, kernel, stride=stride, padding=padding).eval()
    x = torch.randn(2, 16, 5, 8, 8)
    with torch.no_grad():
        want = ours(x)
        torch.onnx.export(ours, (x,), str(tmp_path / "conv.onnx"), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert onednn_calls == []
    model = onnx.load(str(tmp_path / "conv.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1
    weight = next(i for i in model.graph.initializer if i.name == convs[0].input[1])
    assert len(weight.dims) == 2 + conv_dims                       # 2D where the kernel is factorised
    session = ort.InferenceSession(str(tmp_path / "conv.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(1, 16, 5, 8, 8)):                 # the batch axis stays dynamic
        with torch.no_grad():
            ref = ours(batch)
        got = session.run(None, {"x": batch.numpy()})[0]
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)
    assert tuple(want.shape) == tuple(session.run(None, {"x": x.numpy()})[0].shape)
