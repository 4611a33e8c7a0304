"""Denoiser network architectures whose parameter names match the published checkpoints."""

from art_ssni.diffusion.networks.adm import ADMUNet, load_guided_diffusion_checkpoint
from art_ssni.diffusion.networks.ncsnpp import NCSNpp, load_score_sde_checkpoint
from art_ssni.diffusion.networks.small_unet import SmallUNet

__all__ = [
    "ADMUNet",
    "NCSNpp",
    "SmallUNet",
    "load_guided_diffusion_checkpoint",
    "load_score_sde_checkpoint",
]
