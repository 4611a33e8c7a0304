"""AutoAttack ``rand`` (the reference implementation) with a verdict taken over many draws.

The reference AutoAttack (``pyautoattack``) in its ``rand`` version runs APGD-CE and APGD-DLR
with 20 EOT draws per gradient, but decides which samples are robust, and so which ones it
attacks at all, from one stochastic forward pass. On a randomised defence that one pass is a
coin flip: :func:`autoattack_rand` keeps the reference attack and re-judges its final examples
over ``judge_draws`` fresh passes of the defence, reporting single / vote / mean / worst
accuracy for both the clean and the adversarial inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..models.defended import DefendedClassifier
from ..validation import check_images
from .accuracy import aggregate, correct_draws, predict_draws

RAND_NORMS = ("Linf", "L2")
RERUN_ROUNDS = 2


def format_eps(eps: float, norm: str = "Linf") -> str:
    """Epsilon as RobustBench writes it: ``"8/255"`` for Linf multiples of 1/255, else ``"0.5"``."""
    steps = eps * 255
    if norm == "Linf" and steps >= 1 and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{eps:g}"


def _pyautoattack() -> Any:
    try:
        return importlib.import_module("pyautoattack")
    except ModuleNotFoundError as err:
        if err.name != "pyautoattack":
            raise
        raise ModuleNotFoundError(
            "autoattack_rand needs the reference AutoAttack: `pip install pyautoattack`"
        ) from err


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        param = next(model.buffers(), None)
    return param.device if param is not None else torch.device("cpu")


def _adversary(
    model: nn.Module,
    *,
    norm: str,
    eps: float,
    eot_iter: int,
    n_iter: int,
    seed: int,
    device: torch.device,
    verbose: bool,
) -> Any:
    """The reference ``AutoAttack(version='rand')`` with its APGD set to our iterations/draws."""
    package = _pyautoattack()
    adversary = package.AutoAttack(
        model, norm=norm, eps=eps, seed=seed, version="rand", device=device
    )
    adversary.verbose = verbose
    apgd = adversary.apgd
    if apgd.n_iter != n_iter:
        # APGD derives its step-size checkpoints from n_iter in __init__, so rebuild it.
        apgd_cls = importlib.import_module("pyautoattack.autopgd_base").APGDAttack
        apgd = apgd_cls(
            model,
            n_iter=n_iter,
            norm=norm,
            n_restarts=apgd.n_restarts,
            eps=eps,
            seed=seed,
            loss=apgd.loss,
            rho=apgd.thr_decr,
            device=device,
            logger=adversary.logger,
        )
        adversary.apgd = apgd
    apgd.eot_iter = eot_iter
    return adversary


@contextlib.contextmanager
def _log_level(logger: logging.Logger, verbose: bool) -> Iterator[None]:
    if not verbose:
        yield
        return
    previous = logger.level
    handler = logging.StreamHandler()
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _unattacked(
    x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, y_adv: torch.Tensor
) -> torch.Tensor:
    """Samples the reference skipped: its one clean pass got them wrong, so it left them as is."""
    unchanged = (x_adv == x).flatten(1).all(1)
    return unchanged & (y_adv != y)


def autoattack_rand(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    eot_iter: int = 20,
    n_iter: int = 100,
    judge_draws: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Reference AutoAttack ``rand`` on ``model``, its final examples re-judged over draws.

    Runs ``pyautoattack.AutoAttack(version='rand')`` (APGD-CE then APGD-DLR, one restart,
    ``eot_iter`` EOT draws, ``n_iter`` iterations; the reference uses 20 and 100). Samples the
    reference never attacked because its single clean pass misclassified them, although some
    of our ``judge_draws`` clean passes classify them correctly, are sent through it again (at
    most ``RERUN_ROUNDS`` times; the count still left is ``"unattacked"``). Then the clean and
    the final inputs each go through ``judge_draws`` fresh passes of the defence.

    Returns ``(x_adv, result)`` with ``result["robust"]`` and ``result["clean"]`` the
    :func:`~art_ssni.evaluation.aggregate` dicts (single / vote / mean / worst),
    ``result["protocol"]`` a sentence naming every setting, ``result["gradient"]`` the
    defence's gradient mode and ``result["unattacked"]``. The global torch RNG, which the
    reference reseeds, is restored afterwards.
    """
    if norm not in RAND_NORMS:
        raise ValueError(f"norm must be one of {RAND_NORMS} for AutoAttack rand, got {norm!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    for name, value in (
        ("eot_iter", eot_iter),
        ("n_iter", n_iter),
        ("judge_draws", judge_draws),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_images(x)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per image, got shape {tuple(y.shape)}")

    device = _model_device(model)
    x = x.detach().to(device)
    y = y.detach().long().to(device)
    adversary = _adversary(
        model,
        norm=norm,
        eps=eps,
        eot_iter=eot_iter,
        n_iter=n_iter,
        seed=seed,
        device=device,
        verbose=verbose,
    )
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), _log_level(adversary.logger, verbose):
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        x_adv, y_adv = x_adv.to(device), y_adv.to(device)
        clean = predict_draws(model, x, judge_draws, batch_size=batch_size)
        ever_right = correct_draws(clean, y.cpu()).any(0).to(device)
        for _ in range(RERUN_ROUNDS):
            pending = (_unattacked(x, x_adv, y, y_adv) & ever_right).nonzero().flatten()
            if pending.numel() == 0:
                break
            x_again, y_again = adversary.run_standard_evaluation(
                x[pending], y[pending], batch_size=batch_size
            )
            x_adv[pending] = x_again.to(device)
            y_adv[pending] = y_again.to(device)
        unattacked = int((_unattacked(x, x_adv, y, y_adv) & ever_right).sum())
        robust = predict_draws(model, x_adv, judge_draws, batch_size=batch_size)

    gradient = model.gradient if isinstance(model, DefendedClassifier) else None
    mode = gradient or "none (no purifier)"
    version = getattr(_pyautoattack(), "__version__", "?")
    protocol = (
        f"AutoAttack rand (pyautoattack {version}: APGD-CE then APGD-DLR, {n_iter} iterations, "
        f"1 restart, {eot_iter} EOT draws, {norm} eps={format_eps(eps, norm)}, seed {seed}) "
        f"with the purifier's {mode!r} gradient; final examples re-judged over {judge_draws} "
        f"passes of the defence, clean accuracy over the same number of passes"
    )
    return x_adv.detach(), {
        "robust": aggregate(robust, y.cpu()),
        "clean": aggregate(clean, y.cpu()),
        "protocol": protocol,
        "gradient": mode,
        "unattacked": unattacked,
    }
