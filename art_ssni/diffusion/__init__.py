"""Diffusion math: the schedule, the model wrapper and the reverse sampler."""

from .model import (
    CONVENTIONS,
    DiffusionModel,
    continuous_time_label,
    ddpm_time_label,
    level_time_label,
    time_convention,
)
from .sampler import (
    SAMPLERS,
    forward_jump,
    level_table,
    reverse_step,
    run_chain,
    sample,
    sde_step,
    stride_table,
    timestep_table,
)
from .schedule import VPSchedule

__all__ = [
    "CONVENTIONS",
    "SAMPLERS",
    "level_table",
    "level_time_label",
    "run_chain",
    "sde_step",
    "time_convention",
    "forward_jump",
    "stride_table",
    "DiffusionModel",
    "VPSchedule",
    "continuous_time_label",
    "ddpm_time_label",
    "reverse_step",
    "sample",
    "timestep_table",
]
