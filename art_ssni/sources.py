"""Where an evaluation's models and data come from: a preset's shipped models, the user's
checkpoints for a paper preset, or the user's own classifier (``module:callable``) and images.

Every source yields one :class:`Setup` (models, images, labels, reference statistics); the
configuration of what to run on it lives in :mod:`art_ssni.config`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .diffusion.model import DiffusionModel, time_convention
from .noise import ReferenceStats
from .presets import EMBEDDED, Preset, get_preset

_CHECKPOINT_FILES = {
    "score_sde": "score_sde checkpoint_8.pth, or a diffusers DDPM folder",
    "guided_diffusion": "guided-diffusion 256x256_diffusion_uncond.pt",
}
_SHIPPED_STATS = {
    "digits": "digits_stats.safetensors",
    "cifar10-embedded": "cifar10_stats.safetensors",
}


@dataclass
class Setup:
    """The models and data of an evaluation: diffusion model, classifier (on [0, 1] images,
    or normalised with ``mean``/``std``), images x in [0, 1] with labels y, the reference
    statistics SSNI needs (None: none available), and the purification size when it differs
    from the classifier's input (ImageNet: 256 around 224)."""

    name: str
    diffusion: DiffusionModel
    classifier: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    stats: ReferenceStats | None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    purify_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Sources:
    """The user's files: checkpoints for a paper preset, their own classifier factory
    (``module:callable`` or ``file.py:callable``) and images (``.npz`` or an ImageFolder),
    the data set folder, and the reference statistics."""

    diffusion_checkpoint: str | None = None
    classifier_checkpoint: str | None = None
    classifier: str | None = None
    data: str | None = None
    data_dir: str | None = None
    stats: str | None = None


def check_sources(preset: Preset, sources: Sources, *, split: str = "test") -> None:
    """Refuse files that do not exist and checkpoints an embedded preset would ignore,
    before anything is loaded."""
    for name in ("diffusion_checkpoint", "classifier_checkpoint", "data", "data_dir", "stats"):
        value = getattr(sources, name)
        if value and not Path(value).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {value}: no such file or folder")
    if preset.name in EMBEDDED:
        ignored = ["diffusion_checkpoint", "classifier_checkpoint"]
        if preset.name == "digits" or split != "train":
            ignored.append("data_dir")
        given = [f"--{name.replace('_', '-')}" for name in ignored if getattr(sources, name)]
        if given:
            raise ValueError(
                f"the embedded {preset.name} preset uses its shipped models and data and would "
                f"ignore {', '.join(given)}; pass a paper preset (--preset cifar10-linf, ...), "
                "or --classifier module:callable and --data FILE for your own classifier and "
                "images"
            )


def load_setup(
    preset: Preset | str,
    sources: Sources = Sources(),
    *,
    split: str = "test",
    n_images: int | None = None,
    seed: int = 0,
    convention: str | None = None,
) -> Setup:
    """The preset's models and images ("test": evaluation, "train": reference statistics),
    with the user's classifier and images where given. ``n_images`` and ``seed`` pick the
    subset a paper preset decodes (``fixed_subset``), so only those images are read;
    ``convention`` is how the diffusion network is queried (None: the preset's)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    check_sources(preset, sources, split=split)
    convention = convention or preset.run.defence.convention
    if preset.name == "digits":
        setup = _digits(convention, split)
    elif preset.name == "cifar10-embedded":
        setup = _cifar10_embedded(convention, split, sources.data_dir)
    else:
        setup = _paper(preset, sources, convention, split, n_images, seed)
    if sources.stats:
        setup.stats = ReferenceStats.load(sources.stats)
    if sources.classifier:
        setup.classifier = user_classifier(sources.classifier)
    if sources.data:
        from .data.user import load_user_images

        x, y = load_user_images(sources.data, setup.diffusion.image_shape)
        setup = replace(setup, x=x, y=y, name=f"{setup.name} (user data {Path(sources.data).name})")
    if split == "test" and (sources.classifier or sources.data):
        check_classifier_fits(setup.classifier, setup.x, setup.y)
    return setup


def check_classifier_fits(classifier: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse a classifier whose output is not (batch, classes) logits, or labels it cannot
    score, before any work (one forward pass on one image)."""
    from .validation import check_labels, classifier_outputs

    check_labels(y, int(x.shape[0]), classes=classifier_outputs(classifier, x))


def _embedded_diffusion(net: torch.nn.Module, shape, name: str, convention: str) -> DiffusionModel:
    schedule, label = time_convention("discrete", convention)
    return DiffusionModel(net, schedule, time_label=label, image_shape=shape, name=name)


def _shipped_stats(preset: str) -> ReferenceStats | None:
    from .models.zoo import zoo_root

    path = zoo_root() / _SHIPPED_STATS[preset]
    return ReferenceStats.load(path) if path.exists() else None


def _digits(convention: str, split: str) -> Setup:
    from .data.digits import load_digits
    from .models.zoo import load_embedded_classifier, load_embedded_eps_net

    diffusion = _embedded_diffusion(load_embedded_eps_net(), (1, 8, 8), "digits", convention)
    x, y = load_digits(split)
    return Setup("digits", diffusion, load_embedded_classifier(), x, y, _shipped_stats("digits"))


def _cifar10_embedded(convention: str, split: str, data_dir: str | None) -> Setup:
    """ "test" is the 512 shipped images, "train" (for ``art-ssni stats``) the training JPEGs
    from ``data_dir`` (default: the shared data folder)."""
    from .models.zoo import (
        load_embedded_cifar10_classifier,
        load_embedded_cifar10_eps_net,
        load_embedded_cifar10_images,
    )

    net = load_embedded_cifar10_eps_net()
    diffusion = _embedded_diffusion(net, (3, 32, 32), "cifar10-embedded", convention)
    if split == "test":
        x, y = load_embedded_cifar10_images()
    else:
        from .data.cifar10 import load_cifar10

        x, y = load_cifar10(split, root=data_dir, source="jpeg")
    classifier = load_embedded_cifar10_classifier()
    return Setup(
        "cifar10-embedded", diffusion, classifier, x, y, _shipped_stats("cifar10-embedded")
    )


def _paper(
    preset: Preset,
    sources: Sources,
    convention: str,
    split: str,
    n_images: int | None,
    seed: int,
) -> Setup:
    """A paper preset with the user's checkpoints and data (nothing is downloaded)."""
    if not sources.diffusion_checkpoint:
        raise ValueError(
            f"preset {preset.name!r} needs --diffusion-checkpoint "
            f"({_CHECKPOINT_FILES[preset.diffusion_checkpoint]})"
        )
    if split == "test" and not (sources.classifier_checkpoint or sources.classifier):
        raise ValueError(
            f"preset {preset.name!r} needs --classifier-checkpoint (RobustBench Standard.pt or "
            "its model_dir) or --classifier module:callable"
        )
    diffusion = load_preset_diffusion(preset, sources.diffusion_checkpoint, convention)
    if sources.data:
        x, y = torch.empty(0), torch.empty(0, dtype=torch.long)
    else:
        x, y = load_preset_images(preset, split, sources.data_dir, n_images=n_images, seed=seed)
    classifier = (
        load_preset_classifier(preset, sources.classifier_checkpoint)
        if sources.classifier_checkpoint
        else torch.nn.Identity()
    )
    return Setup(preset.dataset, diffusion, classifier, x, y, None)


def load_preset_diffusion(
    preset: Preset | str, path: str | os.PathLike, convention: str | None = None
) -> DiffusionModel:
    """The preset's diffusion model from a local file (a folder loads as diffusers), queried
    with ``convention`` (default: the preset's)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    convention = convention or preset.run.defence.convention
    path = Path(path)
    if path.is_dir():
        return DiffusionModel.from_diffusers(path, convention=convention)
    if not path.is_file():
        raise FileNotFoundError(f"diffusion checkpoint {path} does not exist")
    if preset.diffusion_checkpoint == "score_sde":
        return DiffusionModel.from_score_sde(path, convention=convention)
    return DiffusionModel.from_guided_diffusion(path, convention=convention)


def load_preset_classifier(preset: Preset | str, path: str | os.PathLike | None) -> torch.nn.Module:
    """The preset's classifier, taking [0, 1] images at the purification size."""
    from .models.classifiers import load_cifar10_wideresnet, load_imagenet_resnet50

    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.dataset == "imagenet":
        return load_imagenet_resnet50(path)
    if path is None:
        raise ValueError(
            f"preset {preset.name!r} needs --classifier-checkpoint (RobustBench Standard.pt or "
            "its model_dir)"
        )
    return load_cifar10_wideresnet(path)


def load_preset_images(
    preset: Preset | str,
    split: str,
    data_dir: str | os.PathLike | None,
    *,
    n_images: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the preset's data set; ``split`` is "test" (evaluation) or "train" (stats).

    CIFAR-10's test split is read whole (seconds). Otherwise only the ``n_images`` that a
    sorted ``randperm(total, seed)[:n_images]`` picks are decoded, the same images a caller
    would pick from the whole split with that rule.
    """
    from .data.cifar10 import CIFAR10_SIZES, fixed_subset, load_cifar10
    from .data.imagenet import imagenet_val_files, load_imagenet_val

    preset = get_preset(preset) if isinstance(preset, str) else preset
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if preset.dataset == "cifar10":
        if split == "test":
            return load_cifar10("test", root=data_dir)
        n = min(n_images or preset.ssni.reference_images, CIFAR10_SIZES["train"])
        index = fixed_subset(n, CIFAR10_SIZES["train"], seed=seed).sort().values
        return load_cifar10("train", root=data_dir, indices=index)
    if data_dir is None:
        raise ValueError(f"preset {preset.name!r} needs --data-dir (an ImageNet folder)")
    root = Path(data_dir)
    if split == "train" and (root / "train").is_dir():
        root = root / "train"
    total = len(imagenet_val_files(root)[0])
    n = min(n_images or preset.run.n_images, total)
    index = fixed_subset(n, total, seed=seed).sort().values
    return load_imagenet_val(root, indices=index, size=preset.image_size)


def subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """The fixed-seed subset of n indices out of n_total (sorted)."""
    from .data.cifar10 import fixed_subset

    if n > n_total:
        raise ValueError(f"asked for {n} images but the data holds only {n_total}")
    return fixed_subset(n, n_total, seed=seed).sort().values


def user_classifier(spec: str) -> torch.nn.Module:
    """``module:callable`` (or ``path/to/file.py:callable``): a factory called with no
    arguments that returns an ``nn.Module`` taking images in [0, 1], NCHW."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--classifier must be module:callable, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            file_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if file_spec is None or file_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as err:
        raise ValueError(f"--classifier {spec}: cannot import {module_name} ({err})") from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--classifier {spec}: {module_name} has no callable {attribute!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"--classifier {spec}: {attribute}() returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model.eval()
