"""Target spaces: invertible maps between a clip and the tensor the diffusion model generates.

`rgb` (VDM baseline), `diff` (D-VDM), `mvres` (ED-VDM). Adding a space is one file plus one line in
`registry.py`; the denoiser, diffusion, trainer and sampler never branch on the space's name.
"""

from dvdm.spaces.base import Normalizer, TargetSpace
from dvdm.spaces.registry import SPACES, build_space, space_from_state

__all__ = ["SPACES", "Normalizer", "TargetSpace", "build_space", "space_from_state"]
