"""Prompt -> sentence embedding with the exported tokenizer (`tokenizers`, no transformers) and text graph.

Tokenisation follows the manifest: truncation to `max_length` tokens (CLS and SEP included) and padding to
the longest prompt of the batch with `pad_id`, as the torch side's `TextEncoder.tokenize` does. The graph
does the mean pooling over the attention mask and the L2 normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from dvdm.runtime.errors import ManifestError
from dvdm.runtime.prompts import prompt_list


class OrtTextEncoder:
    def __init__(self, tokenizer_file: str | Path, session: ort.InferenceSession, spec: dict[str, Any]) -> None:
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ManifestError(f"{tokenizer_file}: unreadable tokenizer ({exc})") from None
        self.max_length = int(spec["max_length"])
        self.dim = int(spec["dim"])
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=int(spec["pad_id"]), pad_token=str(spec["pad_token"]))
        self.session = session
        self.output = session.get_outputs()[0].name

    def tokenize(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(prompts))
        return {"input_ids": np.array([e.ids for e in encodings], np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), dim) float32 unit vectors."""
        prompts = prompt_list(prompts)
        if not prompts:
            return np.zeros((0, self.dim), np.float32)
        return self.session.run([self.output], self.tokenize(prompts))[0].astype(np.float32, copy=False)
