"""Target spaces: invertible maps between a clip and the tensor the diffusion model generates.

`rgb` (VDM baseline), `diff` (D-VDM), `mvres` (ED-VDM). Adding a space is one file with a class decorated
by `@register_space`, imported below; the denoiser, diffusion, trainer, sampler, export and service never
branch on the space's name.
"""

from dvdm.spaces.base import Normalizer, TargetSpace
from dvdm.spaces.registry import (SPACES, build_space, register_space, space_class, space_from_state,
                                  target_sizes)

# the built-in spaces register themselves on import, in the order reports list them (baseline first)
from dvdm.spaces import rgb  # noqa: E402,F401  isort: skip
from dvdm.spaces import diff  # noqa: E402,F401  isort: skip
from dvdm.spaces import mvres  # noqa: E402,F401  isort: skip

__all__ = ["SPACES", "Normalizer", "TargetSpace", "build_space", "register_space", "space_class",
           "space_from_state", "target_sizes"]
