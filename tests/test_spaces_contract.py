"""Each target space owns its contract: registry, settings, saved state, sizes, and one decoder.

A space describes its decode as a manifest `decode` block and decodes through `dvdm.runtime.decode`, the
module the torch-free service runs, so what the export writes is what the space itself computes.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dvdm.errors import ConfigError
from dvdm.export.errors import ExportError
from dvdm.models import AutoencoderConfig, ResidualAutoencoder
from dvdm.runtime.decode import check_spec, decode_target
from dvdm.runtime.errors import ManifestError
from dvdm.spaces import SPACES, Normalizer, build_space, register_space, space_class, space_from_state
from dvdm.spaces.ae_codec import AutoencoderResidualCodec
from dvdm.spaces.rgb import RGBSpace


def frames(n=3, h=16, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def tiny_codec(block=8, latent_channels=3):
    torch.manual_seed(0)
    ae = ResidualAutoencoder(AutoencoderConfig(block=block, latent_channels=latent_channels, base_channels=8)).eval()
    with torch.no_grad():  # the decoder's output conv starts at zero: give it weights so residuals are not 0
        ae.decoder.conv_out.weight.normal_(0, 0.5)
    return AutoencoderResidualCodec(ae)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_describes_its_decode_in_json_and_decodes_through_it(name):
    space = build_space(name, codec=tiny_codec() if space_class(name).needs_codec else None)
    spec = json.loads(json.dumps(space.decode_spec()))  # what the manifest carries
    check_spec(spec)
    assert space.description and space_class(name) is type(space)
    rng = np.random.default_rng(1)
    raw = rng.standard_normal(space.target_shape(5, 16, 24)).astype(np.float32) * 1.5
    first = frames(1)[0]
    ours = decode_target(spec, raw, first, space.residual_decoder((16, 24)))
    np.testing.assert_array_equal(space.decode(raw, first), ours)
    assert ours.shape == (5, 16, 24, 3) and ours.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(SPACES))
def test_saved_state_rebuilds_the_same_space(name):
    codec = tiny_codec() if space_class(name).needs_codec else None
    space = build_space(name, codec=codec, reference="previous", dead_zone=0.75, search=4)
    space.normalizer = Normalizer.identity(space.channels)
    again = space_from_state(json.loads(json.dumps(space.state())), codec=codec)
    assert type(again) is type(space) and again.config() == space.config()
    assert again.decode_spec() == space.decode_spec()


def test_target_sizes_before_a_codec_exists_match_the_built_spaces():
    for name, cls in SPACES.items():
        codec = tiny_codec(block=8, latent_channels=5) if cls.needs_codec else None
        space = build_space(name, codec=codec, block=8)
        expected = int(np.prod(space.target_shape(6, 32, 40)))
        assert cls.target_elements(6, 32, 40, {"block": 8, "latent_channels": 5}) == expected


def test_mvres_decode_block_carries_search_and_dead_zone():
    space = build_space("mvres", codec=tiny_codec(), search=4)
    assert space.decode_spec() == {"method": "motion_residual", "block": 8, "search": 4, "motion_channels": 2,
                                   "dead_zone": 0.5, "residual": {"graph": "residual_decoder", "latent_channels": 3}}
    spec = build_space("mvres", codec=tiny_codec(), search=4, dead_zone=1.2).decode_spec()
    assert spec["dead_zone"] == 1.2
    # a manifest written before the dead zone existed decodes with plain rounding
    raw = np.random.default_rng(0).standard_normal((5, 4, 2, 3)).astype(np.float32)
    old = {k: v for k, v in space.decode_spec().items() if k != "dead_zone"}
    first = frames(1)[0]
    np.testing.assert_array_equal(decode_target(old, raw, first, space.residual_decoder((16, 24))),
                                  space.decode(raw, first))
    # a manifest with a dead zone the decoder cannot use is refused up front
    for bad in (0.2, 9.0, "wide", True):
        with pytest.raises(ManifestError, match="dead_zone"):
            check_spec({**spec, "dead_zone": bad})


def test_registry_refuses_unknown_names_settings_and_clashes():
    with pytest.raises(ConfigError, match="unknown target space 'nope'; choose one of rgb, diff, mvres"):
        build_space("nope")
    with pytest.raises(ConfigError, match="unknown space setting"):
        build_space("diff", refrence="first")
    with pytest.raises(ConfigError, match="reference must be one of"):
        build_space("diff", reference="last")

    class Clash(RGBSpace):
        name = "diff"

    with pytest.raises(ValueError, match="taken"):
        register_space(Clash)
    assert SPACES["diff"].__name__ == "DiffSpace"


def test_export_refuses_a_codec_without_a_network():
    from pathlib import Path

    from dvdm.export.export import _check_model

    space = build_space("mvres", block=8)  # the lossless codec: nothing to put in a graph
    space.normalizer = Normalizer.identity(space.channels)
    pipe = SimpleNamespace(space=space, model=SimpleNamespace(text_mlp=None))
    with pytest.raises(ExportError, match="no network to export"):
        _check_model(pipe, {}, Path("run"))


def test_target_sizes_report_every_space_against_the_rgb_clip():
    from dvdm.spaces import target_sizes

    sizes = target_sizes(16, 128, 128, {"block": 16, "latent_channels": 5})
    assert sizes["clip_values"] == 16 * 128 * 128 * 3 == 786_432
    assert sizes["values"] == {"rgb": 737_280, "diff": 737_280, "mvres": 15 * 8 * 8 * 7}
    assert sizes["ratio_vs_rgb"]["mvres"] == 117.03  # the README's "117x smaller" (the paper: 110x)
