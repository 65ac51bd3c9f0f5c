"""`threads="auto"`: the denoiser's intra-op thread count is the faster of the candidates, timed at load."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from dvdm.runtime import thread_choice  # noqa: E402
from dvdm.runtime.errors import ProviderError  # noqa: E402
from dvdm.runtime.pipeline import OrtVideoPipeline  # noqa: E402
from dvdm.runtime.sessions import ProviderChoice  # noqa: E402
from test_serving_app import build_tiny_export  # noqa: E402

CPU = ProviderChoice("cpu", ("CPUExecutionProvider",), "test")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_tiny_export(tmp_path_factory)


@pytest.mark.parametrize("fast", [1, 2])
def test_the_faster_count_wins_and_its_sessions_are_kept(export, fast):
    measured = []

    def fake_measure(sessions, feeds):
        measured.append((sessions.threads, {k: v.shape for k, v in feeds.items()}))
        return 0.001 if sessions.threads == fast else 0.01

    threads, sessions, timings = thread_choice.fastest_denoiser(export / "denoiser.onnx", CPU, batch=3,
                                                                candidates=(2, 1), measure=fake_measure)
    assert threads == fast and sessions.threads == fast and set(timings) == {1, 2}
    assert [n for n, _ in measured] == [2, 1]
    assert all(shapes["x_t"][0] == 3 and shapes["t"] == (3,) for _, shapes in measured)  # the asked batch


def test_real_timing_and_feeds_run(export):
    threads, sessions, timings = thread_choice.fastest_denoiser(export / "denoiser.onnx", CPU, batch=2,
                                                                candidates=(2, 1))
    assert threads in (1, 2) and all(t > 0 for t in timings.values())
    assert sessions.sizes == [2]                  # timed on the session the default request will use
    feeds = thread_choice.random_feeds(sessions, 2)
    assert feeds["t"].dtype == np.int64 and feeds["x_t"].dtype == np.float32


def test_pipeline_auto_threads_generates_and_reports_its_choice(export):
    pipe = OrtVideoPipeline.from_export(export, provider="cpu", threads="auto")
    assert pipe.threads in pipe.thread_timings and pipe.info()["threads"] == pipe.threads
    video = pipe.generate(np.full((pipe.height, pipe.width, 3), 100, np.uint8), "", steps=1, seed=0)
    assert video.shape[0] == pipe.frames
    fixed = OrtVideoPipeline.from_export(export, provider="cpu", threads=1)
    assert fixed.threads == 1 and fixed.thread_timings == {}
    with pytest.raises(ProviderError, match="threads must be"):
        OrtVideoPipeline.from_export(export, provider="cpu", threads="many")
