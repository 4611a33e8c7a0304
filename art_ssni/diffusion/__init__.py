"""Diffusion math: the schedule, the model wrapper and the reverse sampler."""

from .model import (
    CONVENTIONS,
    DiffusionModel,
    continuous_time_label,
    ddpm_time_label,
    level_time_label,
    time_convention,
)
from .rounding import round_half_up
from .sampler import (
    SAMPLERS,
    StepHooks,
    ddim_chain,
    ddim_mean,
    forward_jump,
    level_grid,
    level_table,
    reverse_step,
    run_chain,
    sample,
    sde_chain,
    sde_step,
    step_counts,
    stride_table,
    timestep_table,
)
from .schedule import VPSchedule

__all__ = [
    "CONVENTIONS",
    "SAMPLERS",
    "DiffusionModel",
    "StepHooks",
    "VPSchedule",
    "continuous_time_label",
    "ddim_chain",
    "ddim_mean",
    "ddpm_time_label",
    "forward_jump",
    "level_grid",
    "level_table",
    "level_time_label",
    "reverse_step",
    "round_half_up",
    "run_chain",
    "sample",
    "sde_chain",
    "sde_step",
    "step_counts",
    "stride_table",
    "time_convention",
    "timestep_table",
]
