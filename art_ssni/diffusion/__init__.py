"""Diffusion math: the schedule, the model wrapper and the reverse sampler."""

from .model import DiffusionModel, continuous_time_label, ddpm_time_label
from .sampler import reverse_step, sample, timestep_table
from .schedule import VPSchedule

__all__ = [
    "DiffusionModel",
    "VPSchedule",
    "continuous_time_label",
    "ddpm_time_label",
    "reverse_step",
    "sample",
    "timestep_table",
]
