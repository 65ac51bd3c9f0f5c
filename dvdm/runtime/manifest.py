"""The export folder's `manifest.json`: its format, writing its `files` block, reading and verifying it.

The manifest is the contract between `dvdm export` (torch side) and `serving` (numpy + onnxruntime): it
says everything inference needs (space geometry, normalisation, noise schedule, prediction type, sampler
defaults, how to preprocess the image, tokenise the prompt and decode the target), so serving never
branches on anything the manifest does not say. `dvdm.export` writes it with `file_entries` and the
constants here; the service reads it with `load_manifest`.

Layout of an export folder:

```
export/
  manifest.json          format, space, shapes, normalisation, schedule, sampler defaults, decode, files+sha256
  denoiser.onnx          (x_t, t, image_features[, text]) -> model_output
  image_encoder.onnx     first_frame -> image_features
  text_encoder.onnx      (input_ids, attention_mask) -> embedding          (text-conditioned models)
  residual_decoder.onnx  latent -> residual                                (codec spaces, e.g. mvres)
  tokenizer/             tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json
  parity.json            the parity report (not needed for inference, not hashed)
```
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from dvdm.runtime.errors import ExportIntegrityError, ManifestError

FORMAT = "dvdm-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARITY = "parity.json"

REQUIRED = ("format", "format_version", "clip", "target_shape", "normalization", "diffusion", "sampler", "image",
            "text", "decode", "graphs", "files")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{relative name: {"sha256", "bytes"}} for files under `root` (POSIX separators): the `files` block."""
    out = {}
    for name in sorted(names):
        f = root / name
        out[name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    return out


def _safe_relative(name: str) -> PurePosixPath:
    """A manifest file name as a relative path that stays inside the export folder."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise ManifestError(f"manifest lists an unsafe file name {name!r} (must be relative, inside the folder)")
    return p


def load_manifest(export_dir: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Read `export_dir/manifest.json`; with `verify`, check every listed file's size and sha256.

    Raises ManifestError for a missing/malformed manifest and ExportIntegrityError for a missing or
    modified file, naming it, so a tampered export is refused before any of it is loaded.
    """
    root = Path(export_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"{root}: no such export folder")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{root}: not a dvdm export (no {MANIFEST}); create one with `dvdm export`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a dvdm export manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ManifestError(f"{path}: manifest format version {version!r} is not supported by this serving "
                            f"(supports 1..{FORMAT_VERSION}); upgrade serving or re-export")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: manifest lacks {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise ManifestError(f"{path}: 'files' must map file names to their sha256")
    for name in files:
        _safe_relative(name)
    for graph, spec in manifest["graphs"].items():
        if spec["file"] not in files:
            raise ManifestError(f"{path}: graph {graph} ({spec['file']}) is not listed in 'files' with a sha256")
    if verify:
        verify_files(root, files)
    return manifest


def verify_files(root: Path, files: dict[str, Any]) -> None:
    """Check each listed file exists with the recorded size and sha256 (ExportIntegrityError otherwise)."""
    for name, entry in files.items():
        rel = _safe_relative(name)
        f = root / rel
        if not f.is_file():
            raise ExportIntegrityError(f"{root}: {name} is listed in the manifest but missing; the export is "
                                       f"incomplete, re-export it")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(expected, str) or len(expected) != 64:
            raise ManifestError(f"{root}: manifest entry for {name} has no valid sha256")
        size = entry.get("bytes")
        if size is not None and f.stat().st_size != size:
            raise ExportIntegrityError(f"{f}: size {f.stat().st_size} bytes differs from the manifest's {size}; "
                                       f"the file was modified or corrupted, refusing to load it (re-export)")
        actual = sha256_file(f)
        if actual != expected:
            raise ExportIntegrityError(f"{f}: sha256 {actual[:16]}... differs from the manifest's "
                                       f"{expected[:16]}...; the file was modified or corrupted, refusing to load "
                                       f"it (re-export)")
