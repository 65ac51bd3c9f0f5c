"""ONNX export of a trained model for the torch-free `serving` side, with parity checks.

`export_model(checkpoint_dir, out_dir)` writes the graphs (denoiser, first-frame encoder, text encoder,
residual decoder), the tokenizer files and `manifest.json`, checks ORT against torch graph by graph and end
to end, and replaces `out_dir` atomically. See export.py (flow), graphs.py (where the graphs are cut),
parity.py (the checks); the manifest format is `dvdm.runtime.manifest`.
"""

from dvdm.export.errors import ExportError
from dvdm.export.export import ExportResult, export_model, resolve_checkpoint
from dvdm.runtime.manifest import FORMAT, FORMAT_VERSION

__all__ = ["FORMAT", "FORMAT_VERSION", "ExportError", "ExportResult", "export_model", "resolve_checkpoint"]
