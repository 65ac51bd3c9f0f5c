"""FVD/KVD maths without the network: Frechet distance vs closed forms, KVD sanity, the TF1 resize, protocol,
bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dvdm.errors import ClipTooShortError
from dvdm.evaluate.errors import EvaluationError
from dvdm.evaluate.fvd import (
    RESIZE_METHODS,
    VideoFeatures,
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    fvd_folders,
    fvd_from_features,
    kernel_distance,
    preprocess,
    resize_frames,
    resize_tf1_bilinear,
    trace_sqrt_product,
)
from dvdm.evaluate.group_fvd import cfvd, group_fvd
from dvdm.video import write_frames, write_mp4


def test_frechet_distance_1d_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    for m1, s1, m2, s2 in [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -3.0, 0.5), (5.0, 0.0, 5.0, 3.0)]:
        fd = frechet_distance(np.array([m1]), np.array([[s1 * s1]]), np.array([m2]), np.array([[s2 * s2]]))
        assert fd == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, abs=1e-9)


def test_frechet_distance_diagonal_and_rotated_closed_form():
    rng = np.random.default_rng(0)
    d = 50
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 4.0, d), rng.uniform(0.0, 4.0, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # the distance is invariant to rotating both Gaussians together (the covariances then do not commute
    # with the axes, so this exercises the full matrix square root)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    fd = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert fd == pytest.approx(expected, rel=1e-8)


def test_trace_sqrt_product_matches_scipy_on_full_rank_and_is_stable_when_singular():
    scipy_linalg = pytest.importorskip("scipy.linalg", reason="scipy is optional; only used as a reference")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 40)), rng.normal(size=(300, 40)) * 2 + 1
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.trace(scipy_linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-8)
    # N < D (as with tens of clips and 400-d logits): finite, and FD(x, x) is still 0
    few = rng.normal(size=(10, 400)) * 5
    assert np.isfinite(trace_sqrt_product(*[np.cov(few, rowvar=False)] * 2))
    assert frechet_distance_features(few, few) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(few, rowvar=False)))


def test_frechet_distance_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(1.0, 2.0, size=(20000, 3))
    # population: 3 * (1^2 + (2 - 1)^2) = 6
    assert frechet_distance_features(x, y) == pytest.approx(6.0, rel=0.03)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_kvd_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 16))
    same = rng.normal(size=(200, 16))
    kvd = [kernel_distance(real, same, num_subsets=20)]
    for shift in (0.25, 0.5, 1.0):
        kvd.append(kernel_distance(real, rng.normal(size=(200, 16)) + shift, num_subsets=20))
    assert abs(kvd[0]) < 0.1 * kvd[1]
    assert kvd[1] < kvd[2] < kvd[3]
    # seeded: the same call gives the same number
    assert kernel_distance(real, same, num_subsets=5, seed=1) == kernel_distance(real, same, num_subsets=5, seed=1)


def test_kvd_matches_the_unbiased_mmd_when_one_subset_covers_everything():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 0.3
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    m = 30
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / (m * m)
    assert kernel_distance(y, x, num_subsets=1) == pytest.approx(mmd, rel=1e-10)


def feats(x: np.ndarray, size: str = "64x64", resize: str = "tf1") -> VideoFeatures:
    return VideoFeatures(x, Counter({size: len(x)}), weights_sha256="test", frames=16, resize=resize)


# -- the resize -----------------------------------------------------------------------------------------


def test_tf1_resize_matches_values_derived_from_tensorflows_formula():
    """Issue 13 (8b): TF1 `tf.image.resize_bilinear(images, size)` (align_corners=False,
    half_pixel_centers=False), as the original FVD code calls it, derived by hand from TensorFlow's kernel
    (resize_bilinear_op.cc: scale = in / out; source = i * scale; lower = floor, upper = min(ceil, in - 1),
    lerp = source - lower; top = tl + (tr - tl) * xl, bottom = bl + (br - bl) * xl, out = top + (bottom - top)
    * yl).

    2x2 -> 3x3 of [[0, 100], [200, 50]]: scale = 2/3, so rows and columns sample 0, 2/3, 4/3:
    index 0 -> pixel 0; index 1 -> 2/3 of the way from pixel 0 to 1; index 2 -> lower 1, upper min(2, 1) = 1,
    i.e. pixel 1 (clamped: the image is anchored at its top-left corner).
      row 0: 0, 0 + 100 * 2/3 = 66.667, 100
      row 2 (source row 1): 200, 200 + (50 - 200) * 2/3 = 100, 50
      row 1 (2/3 from row 0 to row 1): 0 + 200 * 2/3 = 133.333;
             66.667 + (100 - 66.667) * 2/3 = 88.889;  100 + (50 - 100) * 2/3 = 66.667
    The half-pixel convention (dvdm before issue 13, torch align_corners=False) samples -1/6 (clamped to 0),
    1/2, 7/6 (clamped to 1) instead: row 0 reads 0, 50, 100.
    """
    image = torch.tensor([[0.0, 100.0], [200.0, 50.0]])[None, None]
    tf1 = np.array([[0.0, 200 / 3, 100.0], [400 / 3, 800 / 9, 200 / 3], [200.0, 100.0, 50.0]])
    np.testing.assert_allclose(resize_tf1_bilinear(image, (3, 3))[0, 0].numpy(), tf1, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(resize_frames(image, (3, 3), "tf1")[0, 0].numpy(), tf1, rtol=1e-6, atol=1e-5)
    half_pixel = np.array([[0.0, 50.0, 100.0], [100.0, 87.5, 75.0], [200.0, 125.0, 50.0]])
    np.testing.assert_allclose(resize_frames(image, (3, 3), "half_pixel")[0, 0].numpy(), half_pixel, atol=1e-5)
    # downscaling samples without averaging: 4x4 -> 2x2 takes source pixels 0 and 2 of each axis
    grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(resize_tf1_bilinear(grid, (2, 2))[0, 0].numpy(), [[0.0, 2.0], [8.0, 10.0]])


def test_tf1_resize_of_a_ramp_at_the_fvd_size():
    """64 -> 224 (BAIR to I3D): a horizontal ramp 0..63 comes out as its source coordinate, i * 64/224 = 2i/7,
    until the clamp at 63 (from i = 221, source 63.14, both neighbours are pixel 63). Computed in float32."""
    ramp = torch.arange(64, dtype=torch.float32).repeat(3, 64, 1)[None]  # (1, 3, 64, 64), value = column
    out = resize_tf1_bilinear(ramp, (224, 224))
    i = np.arange(224)
    expected = np.minimum(i.astype(np.float32) * np.float32(64 / 224), 63.0)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), expected, atol=2e-5)
    assert (out == out[..., :1, :]).all()  # every row alike: vertical sampling of a constant column
    assert out[0, 0, 0, 221] == 63.0 and out[0, 0, 0, 220] == pytest.approx(440 / 7, abs=2e-5)
    # the half-pixel resize samples (i + 0.5) * 64/224 - 0.5 instead: 0.36 source pixel to the left
    assert resize_frames(ramp, (224, 224), "half_pixel")[0, 0, 0, 2].item() == pytest.approx(
        (2 + 0.5) * 64 / 224 - 0.5, abs=1e-5)


def test_preprocess_uses_the_tf1_resize_by_default_and_keeps_224_frames_as_they_are():
    rng = np.random.default_rng(8)
    clip = rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    x = preprocess([clip])
    assert x.shape == (1, 3, 2, 224, 224)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(x[0].permute(1, 0, 2, 3), resize_tf1_bilinear(frames, (224, 224)) / 127.5 - 1.0)
    half = preprocess([clip], resize="half_pixel")
    assert (x - half).abs().max() > 0.05
    exact = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    for resize in RESIZE_METHODS:
        torch.testing.assert_close(preprocess([exact], resize=resize)[0].permute(1, 0, 2, 3),
                                   torch.from_numpy(exact).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
    with pytest.raises(ValueError, match="resize must be one of"):
        preprocess([clip], resize="bicubic")


def test_fvd_result_carries_its_protocol_and_notes():
    rng = np.random.default_rng(5)
    real, fake = feats(rng.normal(size=(12, 400))), feats(rng.normal(size=(10, 400)), "128x128")
    r = fvd_from_features(real, fake, kvd_subsets=3)
    d = r.to_dict()
    assert {"fvd", "kvd", "n_real", "n_fake", "frames", "protocol"} <= set(d)
    assert (d["n_real"], d["n_fake"], d["frames"]) == (12, 10, 16)
    p = d["protocol"]
    assert p["size"] == [224, 224] and p["frames"] == 16 and p["weights_sha256"] == "test"
    assert p["real_sizes"] == {"64x64": 12} and p["fake_sizes"] == {"128x128": 10}
    assert p["resize_method"] == "tf1" and "resize_bilinear" in p["resize"]
    assert "half_pixel_centers=False" in p["resize"]
    assert "ddof=1" in p["statistics"] and "N - 1" in p["statistics"]
    assert any("resized" in n for n in r.notes) and any("below the feature dimension" in n for n in r.notes)
    assert not any("original TF1" in n for n in r.notes)
    assert fvd_from_features(real, real).fvd == pytest.approx(0.0, abs=1e-6)


def test_the_resize_is_part_of_the_protocol():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    old = fvd_from_features(feats(x, resize="half_pixel"), feats(y, resize="half_pixel"), kvd_subsets=2)
    assert old.protocol["resize_method"] == "half_pixel" and "half-pixel" in old.protocol["resize"]
    assert any("not the original TF1 bilinear resize" in n for n in old.notes)
    with pytest.raises(ValueError, match="extracted differently"):
        fvd_from_features(feats(x), feats(y, resize="half_pixel"))


def test_fvd_needs_two_clips_per_side():
    one = feats(np.zeros((1, 400)))
    with pytest.raises(EvaluationError, match="at least 2 clips"):
        fvd_from_features(one, feats(np.zeros((5, 400))))
    with pytest.raises(EvaluationError):
        feature_stats(np.zeros((1, 3)))


def test_fvd_folders_reports_empty_and_short_clips_before_loading_the_network(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    with pytest.raises(EvaluationError, match="no videos"):
        fvd_folders(real, fake)
    rng = np.random.default_rng(6)
    write_mp4(real / "a.mp4", rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8))
    write_frames(fake / "short", rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ClipTooShortError, match=r"short \(10 frames\)"):
        fvd_folders(real, fake)
    write_frames(fake / "short", rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8))
    write_mp4(fake / "b.mp4", rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="at least 2 per side"):
        fvd_folders(real, fake)


def test_group_fvd_is_mean_and_std_over_groups_and_lists_skipped_ones():
    rng = np.random.default_rng(7)
    real = feats(rng.normal(size=(12, 4)))
    fake = feats(np.concatenate([rng.normal(size=(6, 4)), rng.normal(size=(5, 4)) + 3]))
    real_cls = ["a"] * 6 + ["b"] * 5 + ["c"]
    fake_cls = ["a"] * 6 + ["b"] * 5
    g = cfvd(real, real_cls, fake, fake_cls)
    fa = frechet_distance_features(real.features[:6], fake.features[:6])
    fb = frechet_distance_features(real.features[6:11], fake.features[6:11])
    assert set(g.per_group) == {"a", "b"} and "c" in g.skipped
    assert g.mean == pytest.approx((fa + fb) / 2) and g.std == pytest.approx(abs(fa - fb) / 2)
    assert g.to_dict()["n_groups"] == 2
    with pytest.raises(EvaluationError):
        group_fvd(real, ["x"] * 11 + ["y"], fake, ["z"] * 11, kind="subject")
