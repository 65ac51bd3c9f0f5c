"""FVD / KVD as reported (see `dvdm.evaluate.fvd` for the protocol: the original TF code's, TF1 bilinear resize
included): implemented beside the I3D network and its weights in `dvdm.evaluate`, reached from here so every
metric has one address."""

from dvdm.evaluate.fvd import FVDResult, compute_fvd, extract_features, fvd_folders, fvd_from_features

__all__ = ["FVDResult", "compute_fvd", "extract_features", "fvd_folders", "fvd_from_features"]
