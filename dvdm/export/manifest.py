"""Writing the export folder's `manifest.json` (read by `serving.manifest`; keep FORMAT/FORMAT_VERSION equal).

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
from pathlib import Path
from typing import Any

FORMAT = "dvdm-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARITY = "parity.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{relative name: {"sha256", "bytes"}} for files under `root` (POSIX separators)."""
    out = {}
    for name in sorted(names):
        f = root / name
        out[name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    return out
