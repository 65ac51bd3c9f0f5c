"""Training: one trainer for the residual autoencoder and the diffusion model, checkpoints, EMA."""
