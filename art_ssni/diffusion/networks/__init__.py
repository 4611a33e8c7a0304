"""Denoiser network architectures whose parameter names match the published checkpoints."""

from art_ssni.diffusion.networks.adm import ADMUNet, load_guided_diffusion_checkpoint
from art_ssni.diffusion.networks.ncsnpp import NCSNpp, load_score_sde_checkpoint

__all__ = ["ADMUNet", "load_guided_diffusion_checkpoint", "NCSNpp", "load_score_sde_checkpoint"]
