"""`BatchSizedSessions`: a session per batch size gives the dynamic session's numbers, builds each size once
(also under concurrent calls) and falls back to the dynamic session past its limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from dvdm.runtime.batch_sessions import BatchSizedSessions  # noqa: E402
from dvdm.runtime.sessions import ProviderChoice  # noqa: E402

CPU = ProviderChoice("cpu", ("CPUExecutionProvider",), "test")


class _Reshaping(torch.nn.Module):
    """Shape arithmetic on the batch axis (what makes fixed-batch sessions worth having) and a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.lin(x.reshape(b, 4, 6)).reshape(b, 2, 12)
        return y * t[:, None, None]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("bs") / "g.onnx"
    torch.manual_seed(0)
    module = _Reshaping().eval()
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(2, 24), torch.ones(2)), str(path), dynamo=False, opset_version=17,
                          input_names=["x_t", "t"], output_names=["out"],
                          dynamic_axes={"x_t": {0: "batch"}, "t": {0: "batch"}, "out": {0: "batch"}})
    return path, module


def _feeds(batch: int):
    rng = np.random.default_rng(batch)
    return {"x_t": rng.standard_normal((batch, 24), dtype=np.float32), "t": rng.random(batch, dtype=np.float32)}


def test_each_batch_size_gets_its_own_session_with_the_same_numbers(graph):
    path, module = graph
    sessions = BatchSizedSessions(path, CPU, threads=1, max_sizes=2)
    assert {i.name for i in sessions.get_inputs()} == {"x_t", "t"} and sessions.batch_input == "x_t"
    for batch in (1, 2, 3, 2, 1):
        feeds = _feeds(batch)
        got = sessions.run(None, feeds)[0]
        want = sessions.dynamic.run(None, feeds)[0]
        with torch.no_grad():
            ref = module(torch.from_numpy(feeds["x_t"]), torch.from_numpy(feeds["t"])).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert sessions.sizes == [1, 2]                       # batch 3 came past the limit: the dynamic session
    assert sessions.for_batch(3) is sessions.dynamic
    assert sessions.for_batch(2) is sessions.for_batch(2)
    assert sessions.get_providers()[0] == "CPUExecutionProvider"


def test_concurrent_first_calls_build_one_session_per_size(graph, monkeypatch):
    from dvdm.runtime import batch_sessions

    built = []
    real = batch_sessions.create_session
    monkeypatch.setattr(batch_sessions, "create_session", lambda *a, **k: (built.append(a[3:]), real(*a, **k))[1])
    sessions = BatchSizedSessions(graph[0], CPU, threads=1)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: sessions.run(None, _feeds(1 + i % 2))[0].shape, range(16)))
    assert sorted(set(outs)) == [(1, 2, 12), (2, 2, 12)]
    assert sorted(map(str, built)) == sorted(map(str, [(), ({"batch": 1},), ({"batch": 2},)]))
