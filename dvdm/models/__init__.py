"""Networks: the 3D-UNet denoiser, the first-frame encoder, the frozen text encoder and the residual
autoencoder."""

from dvdm.models.autoencoder import AutoencoderConfig, ResidualAutoencoder
from dvdm.models.config import ModelConfigError, UNetConfig
from dvdm.models.image_encoder import FirstFrameEncoder
from dvdm.models.text_encoder import SentenceEmbedder, TextEncoder
from dvdm.models.unet3d import ResBlock3D, SpatialAttention, TemporalAttention, UNet3D, count_parameters

__all__ = [
    "AutoencoderConfig",
    "FirstFrameEncoder",
    "ModelConfigError",
    "ResBlock3D",
    "ResidualAutoencoder",
    "SentenceEmbedder",
    "SpatialAttention",
    "TemporalAttention",
    "TextEncoder",
    "UNet3D",
    "UNetConfig",
    "count_parameters",
]
