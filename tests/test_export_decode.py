"""The manifest's decode block: serving's numpy decoder reproduces every space's own decode exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dvdm.export.decode_spec import check_decode_spec, decode_spec
from dvdm.export.errors import ExportError
from dvdm.models import AutoencoderConfig, ResidualAutoencoder
from dvdm.spaces import Normalizer, build_space
from dvdm.spaces.ae_codec import AutoencoderResidualCodec


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(n=3, h=16, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, kw", [("rgb", {}), ("diff", {"reference": "first"}),
                                      ("diff", {"reference": "previous"})])
def test_pixel_spaces_decode_exactly(name, kw):
    space = build_space(name, **kw)
    space.normalizer = Normalizer([0.1, -0.2, 0.0], [0.5, 0.3, 0.7])
    spec = decode_spec(space)
    assert spec["method"] == "pixels"
    report = check_decode_spec(space, spec, space.target_shape(5, 16, 24), frames(), None)
    assert report == {"samples": 3, "max_abs_diff": 0, "passed": True}


def test_mvres_with_autoencoder_decodes_exactly():
    torch.manual_seed(0)
    ae = ResidualAutoencoder(AutoencoderConfig(block=8, latent_channels=3, base_channels=8)).eval()
    with torch.no_grad():  # the decoder's output conv starts at zero: give it weights so residuals are not 0
        ae.decoder.conv_out.weight.normal_(0, 0.5)
    codec = AutoencoderResidualCodec(ae)
    space = build_space("mvres", codec=codec, search=4)
    space.normalizer = Normalizer([0.0] * 5, [2.0, 2.0, 1.0, 1.0, 1.0])
    spec = decode_spec(space)
    assert spec == {"method": "motion_residual", "block": 8, "search": 4, "motion_channels": 2, "dead_zone": 0.5,
                    "residual": {"graph": "residual_decoder", "latent_channels": 3}}

    def residual(z):
        return codec.decode(z, (16, 24)).transpose(0, 3, 1, 2)

    report = check_decode_spec(space, spec, space.target_shape(5, 16, 24), frames(), residual)
    assert report["passed"] and report["max_abs_diff"] == 0
    # the dead zone reaches the manifest, and serving decodes with it exactly as the space does
    space.dead_zone = 1.2
    spec = decode_spec(space)
    assert spec["dead_zone"] == 1.2
    assert check_decode_spec(space, spec, space.target_shape(5, 16, 24), frames(), residual)["passed"]
    # a manifest without the key (written before the dead zone existed) means plain rounding
    old = {k: v for k, v in spec.items() if k != "dead_zone"}
    space.dead_zone = 0.5
    assert check_decode_spec(space, old, space.target_shape(5, 16, 24), frames(), residual)["passed"]
    # a manifest with a dead zone the decoder cannot use is refused up front
    from serving.decode import check_spec
    from serving.errors import ManifestError

    for bad in (0.2, 9.0, "wide", True):
        with pytest.raises(ManifestError, match="dead_zone"):
            check_spec({**spec, "dead_zone": bad})


def test_lossless_codec_and_unknown_spaces_are_refused():
    with pytest.raises(ExportError, match="no network to export"):
        decode_spec(build_space("mvres", block=8))

    class Odd(type(build_space("rgb"))):
        name = "odd"

    with pytest.raises(ExportError, match="no torch-free decode description"):
        decode_spec(Odd())


def test_a_wrong_description_is_caught():
    space = build_space("diff")
    space.normalizer = Normalizer.identity(3)
    spec = {**decode_spec(space), "reference": "previous"}
    report = check_decode_spec(space, spec, space.target_shape(5, 16, 24), frames(), None)
    assert not report["passed"] and report["max_abs_diff"] > 0
