"""The runtime core: what training, export and the torch-free service must agree on, written once.

numpy and the standard library only (never torch, numba, prefect or dvc), so `serving` imports it and a
serve-only install needs nothing else:

- `manifest`: the export folder's `manifest.json` format, reading, checking and sha256 hashing;
- `ddim`: timestep spacing, the x0/eps/v conversions and the DDIM update, applied to numpy arrays by the
  service's sampler and to torch tensors by `dvdm.diffusion` (the arithmetic is written for either);
- `guidance`: classifier-free guidance's scale check and mix;
- `decode`: turning a generated target into frames, for every target space (each space describes its decode
  as a manifest `decode` block and decodes through this module).
"""
