"""The metrics dvdm reports: PSNR, SSIM and FVD/KVD, each defined once and used by every stage (train-ae,
evaluate, the export's parity check, the benchmarks).

Conventions (every number computed since issue 13 follows them; README and benchmark numbers from before it
are marked as such):
- PSNR (`dvdm.metrics.psnr`, numpy only, imports no torch): 10 log10(255^2 / MSE) dB, MSE in float64 over
  the elements compared, capped at `PSNR_CAP_DB` = 100 dB (identical inputs give exactly 100, so means and
  JSON stay finite). Two aggregations, named by the caller: a clip's `psnr` in evaluate is the mean of its
  per-frame PSNRs (`psnr_per_frame`, the paper's Table 2 "averaged over 16 frames") and a set's the mean
  over clips; train-ae's `residual_psnr` / `reconstruction_psnr` and the export's end-to-end PSNR pool the
  MSE over everything first (`psnr`, `psnr_of_mse`), so one exact clip does not dominate the result.
- SSIM (`dvdm.metrics.ssim`): the published protocol, as scikit-image's `structural_similarity(a, b,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)` and
  `tf.image.ssim`: per frame, uint8 RGB scaled to [0, 1], Gaussian window 11 taps, sigma 1.5, k1 0.01,
  k2 0.03, the SSIM map over the valid region only (a 5-pixel border, where the window would leave the
  frame, is excluded), mean over the map and the 3 channels, float32; a clip's value is the mean over its
  frames, a set's the mean over clips; evaluate records it as `ssim_protocol`. `convention="padded"` gives
  the torchmetrics-style number dvdm reported before issue 13 (reflect-padded full map; ~0.045 higher on
  64x64 BAIR frames in issue 13's check). The autoencoder's SSIM loss term passes the padded convention explicitly.
- FVD / KVD (`dvdm.metrics.fvd`, implemented in `dvdm.evaluate.fvd` beside the I3D network it needs): the
  original TF protocol (first 16 frames, TF1 `resize_bilinear` to 224x224 without half-pixel centres, I3D
  Kinetics-400 logits, unbiased covariance as TF-GAN), recorded with every value as `fvd_protocol`;
  `resize="half_pixel"` gives the resize dvdm used before issue 13.

Import from the submodules (`from dvdm.metrics.psnr import psnr`); this package imports nothing itself, so
the PSNR module stays free of torch.
"""
