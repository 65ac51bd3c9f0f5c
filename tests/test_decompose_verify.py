"""The decompose stage's per-clip check: a decomposition (or difference stack) that does not rebuild its clip
exactly stops the stage with the clip's id, so a codec bug never reaches training data silently."""

from __future__ import annotations

import numpy as np
import pytest

from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.differences import frame_differences
from dvdm.errors import DataError
from dvdm.stages.decompose import DecomposeStatistics, verify_clip


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def test_an_exact_decomposition_passes_and_is_counted(clip):
    d = decompose(clip, DecomposeConfig(block=8))
    diff = frame_differences(clip, "first")
    verify_clip("c0", clip, d, diff, "first")
    statistics = DecomposeStatistics(search=8)
    statistics.add(d, diff)
    summary = statistics.summary("first")
    assert statistics.clips == 1 and summary["motion_vectors"]["histogram"]["range"] == [-8, 8]
    assert sum(map(sum, summary["motion_vectors"]["histogram"]["counts_dy_dx"])) == 2 * 2 * 2
    assert summary["differences"]["reference"] == "first"


def test_a_corrupted_residual_or_difference_stops_the_stage(clip):
    d = decompose(clip, DecomposeConfig(block=8))
    d.residual[0, 0, 0, 0] += 3
    with pytest.raises(DataError, match=r"clip c1: decomposition does not invert exactly \(max error 3\)"):
        verify_clip("c1", clip, d, None, "first")
    exact = decompose(clip, DecomposeConfig(block=8))
    diff = frame_differences(clip, "previous")
    diff[1, 5, 5, 1] += 2
    with pytest.raises(DataError, match="clip c2"):
        verify_clip("c2", clip, exact, diff, "previous")
