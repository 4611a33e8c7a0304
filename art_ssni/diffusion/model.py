"""A noise-prediction network together with its schedule: eps, score and forward noising."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .schedule import VPSchedule

TimeLabel = Callable[[torch.Tensor], torch.Tensor]


def ddpm_time_label(t: torch.Tensor) -> torch.Tensor:
    """Level t in 1..N -> the 0-based index t - 1 that DDPM-family networks were trained on.

    Ho et al.'s DDPM, diffusers and guided-diffusion index their schedule from 0, so their
    timestep k has ``abar = prod_{i<=k+1}`` in our 1-based level convention.
    """
    return t - 1


def continuous_time_label(num_steps: int = 1000) -> TimeLabel:
    """Level t -> 999 * (t / N), the label score_sde's continuous VP models were trained on."""

    def label(t: torch.Tensor) -> torch.Tensor:
        return t.float() * (999.0 / num_steps)

    return label


def level_time_label(t: torch.Tensor) -> torch.Tensor:
    """Level t -> the label t itself (DiffPure's SDE path feeds guided-diffusion 1000 s)."""
    return t.float()


CONVENTIONS = ("as-trained", "lee-kim", "diffpure-sde")
"""How a network is queried at level t: which abar and which time label (DESIGN section 9).

- "as-trained": as the network was trained. score_sde: continuous VP abar, label 999 t/N
  (score_sde's get_score_fn, EPS-AD); DDPM-family (guided-diffusion, diffusers): discrete
  abar, label t - 1 (guided-diffusion's p_sample).
- "lee-kim": Lee & Kim's DDPM re-implementation: discrete abar and label t - 1 for every
  network, score_sde included.
- "diffpure-sde": DiffPure's SDE path: continuous VP abar for every network; score_sde gets
  999 t/N, DDPM-family networks get the label t.
"""


def time_convention(
    trained_on: str, name: str = "as-trained", schedule: VPSchedule | None = None
) -> tuple[VPSchedule, TimeLabel]:
    """The (schedule, time label) of convention ``name`` for a network trained on
    ``trained_on`` = "continuous" (score_sde VP) or "discrete" (DDPM linear); ``schedule``
    gives the betas (the defaults otherwise)."""
    if name not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {name!r}")
    if trained_on not in ("continuous", "discrete"):
        raise ValueError(f"trained_on must be 'continuous' or 'discrete', got {trained_on!r}")
    base = schedule or VPSchedule()
    betas = (base.beta_start, base.beta_end, base.num_steps)
    continuous = name == "diffpure-sde" or (name == "as-trained" and trained_on == "continuous")
    if trained_on == "continuous" and name != "lee-kim":
        label = continuous_time_label(base.num_steps)
    elif trained_on == "discrete" and name == "diffpure-sde":
        label = level_time_label
    else:
        label = ddpm_time_label
    return VPSchedule(*betas, continuous=continuous), label


class DiffusionModel(nn.Module):
    """Wraps any ``eps_net(x_t, label)`` with x_t in [-1, 1] (B, C, H, W).

    The network may return a tensor, an object with ``.sample`` (diffusers) or 2C channels of
    which the first C are eps (learned variance, as guided-diffusion). ``time_label`` maps our
    integer levels to the network's own time input (default: the DDPM 0-based index).
    """

    def __init__(
        self,
        eps_net: nn.Module,
        schedule: VPSchedule | None = None,
        *,
        time_label: TimeLabel | None = None,
        image_shape: tuple[int, int, int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.eps_net = eps_net
        self.schedule = schedule if schedule is not None else VPSchedule()
        self.time_label = time_label if time_label is not None else ddpm_time_label
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.name = name or type(eps_net).__name__
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        param = next(self.eps_net.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        param = next(self.eps_net.parameters(), None)
        return param.dtype if param is not None else torch.float32

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise prediction at levels ``t`` (LongTensor of B levels, each >= 1)."""
        if t.shape != (x_t.shape[0],):
            raise ValueError(
                f"need one level per sample: x_t {tuple(x_t.shape)}, t {tuple(t.shape)}"
            )
        out = self.eps_net(x_t, self.time_label(t))
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        channels = x_t.shape[1]
        if out.shape[1] == 2 * channels:
            out = out[:, :channels]
        if out.shape != x_t.shape:
            raise ValueError(
                f"eps network returned shape {tuple(out.shape)} for input {tuple(x_t.shape)}"
            )
        return out

    def score(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x_t) = -eps(x_t, t) / sqrt(1 - abar_t)."""
        sigma = torch.sqrt(1.0 - self.schedule.abar(t, x_t.dtype)).view(-1, 1, 1, 1)
        return -self.eps(x_t, t) / sigma

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z (x0 in [-1, 1])."""
        abar = self.schedule.abar(t, x0.dtype).view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def fingerprint(self) -> str:
        """A digest of the network's weights, schedule and time labels.

        Statistics files record it so that they cannot be used with another model.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(self.schedule.describe().encode())
            digest.update(getattr(self.time_label, "__qualname__", "label").encode())
            for key, tensor in sorted(self.eps_net.state_dict().items()):
                digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(
                    tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().data
                )
            self._fingerprint = f"{type(self.eps_net).__name__}:{digest.hexdigest()[:16]}"
        return self._fingerprint

    @classmethod
    def from_score_sde(
        cls,
        path: str | os.PathLike,
        *,
        use_ema: bool = True,
        convention: str = "as-trained",
        map_location: str | torch.device = "cpu",
        **config,
    ) -> DiffusionModel:
        """score_sde DDPM++ (continuous VP) from a ``checkpoint_8.pth``-layout file.

        The EMA weights are used by default, as DiffPure and SSNI do. ``convention`` (see
        :data:`CONVENTIONS`): "as-trained" (default) gives the network the label 999 t/N on
        the VP-SDE marginal (beta 0.1..20); "lee-kim" the label t - 1 on the discrete abar.
        """
        from .networks.ncsnpp import load_score_sde_checkpoint

        schedule, label = time_convention("continuous", convention)
        net = load_score_sde_checkpoint(path, use_ema=use_ema, map_location=map_location, **config)
        channels, size = config.get("in_channels", 3), net.image_size
        return cls(
            net,
            schedule,
            time_label=label,
            image_shape=(channels, size, size),
            name="score_sde-ddpmpp",
        )

    @classmethod
    def from_guided_diffusion(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        convention: str = "as-trained",
        map_location: str | torch.device = "cpu",
        **config,
    ) -> DiffusionModel:
        """guided-diffusion ADM UNet (``256x256_diffusion_uncond.pt`` layout).

        Linear DDPM schedule with 1000 steps; the learned-variance channels are dropped by
        :meth:`eps`; ``dtype`` (float16 / bfloat16) runs the network body in reduced precision.
        ``convention``: "as-trained" and "lee-kim" give the label t - 1 on the discrete abar,
        "diffpure-sde" the label t on the VP-SDE marginal (DiffPure, EPS-AD on ImageNet).
        """
        from .networks.adm import load_guided_diffusion_checkpoint

        schedule, label = time_convention("discrete", convention)
        net = load_guided_diffusion_checkpoint(
            path, map_location=map_location, dtype=dtype, **config
        )
        channels, size = config.get("in_channels", 3), net.image_size
        return cls(
            net,
            schedule,
            time_label=label,
            image_shape=(channels, size, size),
            name="guided-diffusion",
        )

    @classmethod
    def from_diffusers(
        cls,
        unet_or_path: nn.Module | str | os.PathLike,
        schedule: VPSchedule | None = None,
        *,
        convention: str = "as-trained",
        **kwargs,
    ) -> DiffusionModel:
        """Wrap a diffusers ``UNet2DModel`` (an instance, a local folder or, online, a hub id).

        A pipeline folder (``unet/`` and ``scheduler/``) is accepted; the linear DDPM schedule
        is read from its scheduler config when no schedule is given. ``convention`` as for
        :meth:`from_guided_diffusion` (a DDPM-trained network).
        """
        from .._compat import import_torchvision

        import_torchvision()
        from diffusers import UNet2DModel

        if isinstance(unet_or_path, nn.Module):
            unet = unet_or_path
        else:
            unet, schedule = _load_diffusers_unet(UNet2DModel, unet_or_path, schedule)
        config = unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        kwargs.setdefault("image_shape", (config.in_channels, *size))
        if convention != "as-trained" or schedule is None:
            schedule, label = time_convention("discrete", convention, schedule)
            kwargs.setdefault("time_label", label)
        return cls(unet.eval(), schedule, **kwargs)


def _load_diffusers_unet(unet_cls, source, schedule):
    """A UNet2DModel from a local folder (model or pipeline layout) or a hub id, with schedule."""
    import json

    from diffusers import DDPMScheduler

    path = Path(source)
    subfolder = "unet" if (path / "unet").is_dir() else None
    try:
        unet = unet_cls.from_pretrained(os.fspath(source), subfolder=subfolder)
    except (OSError, ValueError) as err:
        where = "local folder" if path.exists() else "hub id (needs a network connection)"
        raise ValueError(
            f"could not load a diffusers UNet2DModel from {where} {source}: {err}"
        ) from err
    if schedule is not None:
        return unet, schedule
    config = None
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            break
    if config is None and not path.exists():
        for sub in (None, "scheduler"):
            try:
                config = dict(DDPMScheduler.load_config(os.fspath(source), subfolder=sub))
                break
            except (OSError, ValueError):
                continue
    if config is None:
        return unet, None
    kind = config.get("beta_schedule", "linear")
    if kind != "linear":
        raise ValueError(f"{source}: only the linear beta schedule is supported, got {kind!r}")
    schedule = VPSchedule(
        config.get("beta_start", 1e-4),
        config.get("beta_end", 0.02),
        config.get("num_train_timesteps", 1000),
    )
    return unet, schedule
