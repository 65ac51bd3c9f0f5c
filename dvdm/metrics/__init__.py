"""The metrics dvdm reports: PSNR, SSIM and FVD/KVD, each defined once and used by every stage (train-ae,
evaluate, the export's parity check, the benchmarks).

Conventions (every number in metrics.json, the README and the benchmark results follows them):
- PSNR (`dvdm.metrics.psnr`, numpy only, imports no torch): 10 log10(255^2 / MSE) dB, MSE in float64 over
  the elements compared, capped at `PSNR_CAP_DB` = 100 dB (identical inputs give exactly 100, so means and
  JSON stay finite). Two aggregations, named by the caller: a clip's `psnr` in evaluate is the mean of its
  per-frame PSNRs (`psnr_per_frame`, the paper's Table 2 "averaged over 16 frames") and a set's the mean
  over clips; train-ae's `residual_psnr` / `reconstruction_psnr` and the export's end-to-end PSNR pool the
  MSE over everything first (`psnr`, `psnr_of_mse`), so one exact clip does not dominate the result.
- SSIM (`dvdm.metrics.ssim`): per frame, uint8 RGB scaled to [0, 1] (data range 1), Gaussian window 11 taps,
  sigma 1.5, k1 0.01, k2 0.03, reflect padding so the SSIM map has the frame's size, mean over the map and
  the 3 channels, float32 (torchmetrics' defaults); a clip's value is the mean over its frames, a set's the
  mean over clips. The autoencoder's SSIM loss term uses the same function and the same window.
- FVD / KVD (`dvdm.metrics.fvd`, implemented in `dvdm.evaluate.fvd` beside the I3D network it needs): the
  original protocol (16 frames, 224x224, I3D Kinetics-400 logits), recorded with every value.

Import from the submodules (`from dvdm.metrics.psnr import psnr`); this package imports nothing itself, so
the PSNR module stays free of torch.
"""
