"""The adaptive-attack ensemble: robust accuracy is the share of images that survive every attack.

AutoAttack's rule (Croce & Hein 2020) runs a list of attacks in order, keeps per image the
first adversarial example that fools the model, and runs later attacks only on the images
still classified correctly. A randomised defence is judged over N draws, so "fools" needs a
rule; :func:`ensemble` judges with the evaluation's final judging itself:

- every attack's candidates are judged over N fresh draws of the defence, as a row of that
  attack alone would be;
- the first candidate whose majority vote is wrong is kept, and that image leaves the
  ensemble: later attacks run only on the images whose vote still holds;
- an image whose vote no candidate breaks keeps the candidate with the fewest correct draws
  (ties: the earlier attack), so that it is wrong in some draw (worst-of-N) if any attack's
  judging made it so.

That judging is the row's verdict: the runner records the kept candidates' predictions and
levels from it and does not judge them again. Judging the kept candidates again would undo
the selection (an image kept because its vote broke in these N draws holds in the next N
about as often as its per-draw error allows), and the ensemble would report more robustness
than its strongest member. Under the rule an image counts as robust only if it survives the
judging of every attack that ran on it, so the ensemble's robust accuracy is at most each
member's alone (in expectation: each judging is random). It is the attacker's count, as
AutoAttack's is: an image whose vote holds with probability p under each of K attacks
survives all K judgings with probability p^K.

``breakdown`` receives per image which attack was the first to break the vote, which was the
first to make at least one draw wrong (worst-of-N), which candidate was kept, the correct
draws of every member's candidate, and on which images each attack ran (:func:`summarise`
counts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._rng import RandomSource, SampleStreams, as_source, int_seed
from ..models.defended import DefendedClassifier
from ..validation import check_images
from .accuracy import majority_vote
from .eot import DEFAULT_MAX_ROWS, draw_logits

NAME = "ensemble"
RULE = (
    "every attack's candidates judged over N fresh draws, which are the row's final judging "
    "(the kept candidates are not judged again); per image the first candidate whose vote is "
    "wrong is kept and later attacks skip that image; an image no attack breaks keeps the "
    "candidate with the fewest correct draws"
)
ENSEMBLE_BUDGET = (
    "norm", "eps", "step", "iterations", "eot", "restarts", "max_rows", "selector_weight",
)  # fmt: skip
"""Every budget keyword a member takes (the ensemble hands each member those it takes)."""
RENAMED = {"selector_weight": "weight"}
IN_LOOP = ("judge_draws", "criterion")


@dataclass(frozen=True)
class Member:
    """One attack of an ensemble: its name in reports, the registered attack it runs, and the
    keywords it fixes (APGD's loss)."""

    name: str
    attack: str
    options: tuple[tuple[str, Any], ...] = ()


ALIASES = {
    "apgd-ce": Member("apgd-ce", "apgd-eot", (("loss", "ce"),)),
    "apgd-dlr": Member("apgd-dlr", "apgd-eot", (("loss", "dlr"),)),
}
DEFAULT_MEMBERS = (
    "apgd-ce", "apgd-dlr", "pgd-eot", "bpda-eot",
    "selector-aware", "selector-constrained", "dac-mask", "spectral", "low-frequency",
)  # fmt: skip
"""The default ensemble, in order; the members a defence does not offer a target for are
left out (:func:`default_members`)."""


def member_names() -> list[str]:
    """Every name :func:`member` knows: the aliases and the registered attacks."""
    from .registry import ATTACKS

    return [*ALIASES, *(name for name in ATTACKS if name != NAME)]


def member(name: str | Member) -> Member:
    """The member called ``name`` (an alias such as ``apgd-dlr`` or a registered attack)."""
    from .registry import ATTACKS

    if isinstance(name, Member):
        found = name
    elif name in ALIASES:
        found = ALIASES[name]
    elif isinstance(name, str) and name in ATTACKS and name != NAME:
        found = Member(name, name)
    else:
        raise ValueError(f"unknown ensemble member {name!r}; choose from {member_names()}")
    if found.attack not in ATTACKS or found.attack == NAME:
        raise ValueError(f"ensemble member {found.name!r} runs no registered attack")
    return found


def default_members(model: nn.Module) -> tuple[str, ...]:
    """The default ensemble for ``model``: APGD-EOT with CE and DLR loss, PGD-EOT, BPDA-EOT,
    then the adaptive attacks on the defence's own machinery that it offers a target for."""
    from .registry import ATTACKS

    return tuple(n for n in DEFAULT_MEMBERS if ATTACKS[member(n).attack].applies(model))


def _budget_for(takes: Sequence[str], in_loop: bool, budget: Mapping[str, Any]) -> dict:
    keys = {RENAMED.get(k, k) for k in takes} | (set(IN_LOOP) if in_loop else set())
    return {k: v for k, v in budget.items() if k in keys}


def _check(x: torch.Tensor, y: torch.Tensor, draws: int, members: Sequence[Member]) -> None:
    check_images(x)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one label per image, got {tuple(y.shape)}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"the ensemble's judging draws must be an int >= 1, got {draws!r}")
    if not members:
        raise ValueError("the ensemble needs at least one attack")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"the ensemble names an attack twice: {names}")


def _subset(model: nn.Module, rows: torch.Tensor) -> AbstractContextManager:
    """Name the samples ``rows`` of a defence whose samples are named (a no-op otherwise), so
    that a member run on the survivors keys its draws by their ids, not their positions."""
    ids = getattr(model, "sample_ids", None)
    return model.samples(ids[rows.cpu()]) if ids is not None else nullcontext()


@torch.no_grad()
def _judge(
    model: nn.Module, x: torch.Tensor, draws: int, max_rows: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels (draws, N) of ``draws`` passes of the defence on x, and the levels those passes
    used ((draws, N), None when the defence picks none)."""
    defended = isinstance(model, DefendedClassifier)
    with model.record_levels() if defended else nullcontext([]) as passes:
        labels = draw_logits(model, x, draws, max_rows=max_rows).argmax(1)
    levels = torch.cat(passes).view(draws, -1).cpu() if passes else None
    return labels.view(draws, x.shape[0]).cpu(), levels


def _seeds(stream: RandomSource, count: int) -> list[int]:
    if isinstance(stream, SampleStreams):
        return [int_seed(stream) for _ in range(count)]
    place = stream.device if stream is not None else "cpu"
    return torch.randint(0, 2**31 - 1, (count,), generator=stream, device=place).tolist()


def ensemble(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[str | Member] | None = None,
    *,
    generator: RandomSource = None,
    draws: int = 10,
    max_rows: int = DEFAULT_MAX_ROWS,
    breakdown: dict[str, Any] | None = None,
    **budget: Any,
) -> torch.Tensor:
    """Adversarial examples from the attacks ``attacks`` run in order (default:
    :func:`default_members`), kept per image by the rule of this module.

    Each member gets the budget keywords its spec takes (``selector_weight`` as ``weight``;
    ``judge_draws`` and ``criterion`` too when it judges in the loop) and its own seed drawn
    from ``generator``; a keyword outside :data:`ENSEMBLE_BUDGET` is refused. ``breakdown``,
    a dict, receives ``members`` (names), the verdict on the returned examples
    (``predictions`` and ``levels``, (draws, N)), and per image ``first_vote``,
    ``first_worst``, ``kept`` (member index, -1 for none), ``correct`` (correct draws of the
    kept candidate), ``member_correct`` (members x images, -1 where a member did not run) and
    ``ran`` (members x images), all on the CPU. Report the verdict, not a judging of the
    returned examples on fresh draws (see the module's text).
    """
    from .registry import ATTACKS

    chosen = [member(a) for a in (default_members(model) if attacks is None else attacks)]
    _check(x, y, draws, chosen)
    specs = [ATTACKS[m.attack] for m in chosen]
    known = {RENAMED.get(k, k) for k in ENSEMBLE_BUDGET} | set(IN_LOOP)
    unknown = sorted(set(budget) - known)
    if unknown:
        raise ValueError(f"the ensemble takes the budget {sorted(known)}, not {unknown}")
    for m, spec in zip(chosen, specs):
        why = spec.refusal(model)
        if why is not None:
            raise ValueError(f"ensemble member {m.name!r} cannot attack this defence: {why}")
    stream = as_source(generator)
    seeds = _seeds(stream, len(chosen))
    x, y = x.detach(), y.to(x.device)
    n, device = x.shape[0], x.device
    best = x.clone()
    predictions = torch.zeros(draws, n, dtype=torch.long)
    levels: torch.Tensor | None = None
    correct_best = torch.full((n,), draws + 1, dtype=torch.long)
    member_correct = torch.full((len(chosen), n), -1, dtype=torch.long)
    first_vote = torch.full((n,), -1, dtype=torch.long)
    first_worst, kept = first_vote.clone(), first_vote.clone()
    for k, (m, spec) in enumerate(zip(chosen, specs)):
        alive = (first_vote < 0).nonzero()[:, 0]
        if alive.numel() == 0:
            break
        kwargs = {**_budget_for(spec.takes, spec.in_loop, budget), **dict(m.options)}
        if "max_rows" in spec.takes:
            kwargs["max_rows"] = max_rows
        source = seeds[k]
        if isinstance(stream, SampleStreams):
            source = stream.subset(alive, source)
        with _subset(model, alive):
            candidate = spec.run(model, x[alive.to(device)], y[alive.to(device)],
                                 generator=source, **kwargs)  # fmt: skip
            labels, used = _judge(model, candidate, draws, max_rows)
        truth = y[alive.to(device)].cpu()
        correct = (labels == truth).sum(0)
        member_correct[k, alive] = correct
        broken = majority_vote(labels) != truth
        take = broken | (correct < correct_best[alive])
        rows = alive[take]
        correct_best[rows] = correct[take]
        best[rows.to(device)] = candidate[take.to(device)].detach()
        predictions[:, rows] = labels[:, take]
        if used is not None:
            levels = torch.zeros(draws, n, dtype=used.dtype) if levels is None else levels
            levels[:, rows] = used[:, take]
        kept[rows] = k
        first_vote[alive[broken]] = k
        newly_worst = (correct < draws) & (first_worst[alive] < 0)
        first_worst[alive[newly_worst]] = k
    if breakdown is not None:
        breakdown.update(
            members=[m.name for m in chosen],
            predictions=predictions,
            levels=levels,
            first_vote=first_vote,
            first_worst=first_worst,
            kept=kept,
            correct=correct_best,
            member_correct=member_correct,
            ran=member_correct >= 0,
        )
    return best


def summarise(breakdowns: Sequence[Mapping[str, Any]], draws: int) -> dict[str, Any]:
    """The ensemble record of a results row from the breakdowns of its batches: per attack,
    the images it ran on, the images it was the first to break under the vote and in at
    least one draw (worst-of-N), and the images whose kept candidate it made."""
    from .registry import ATTACKS

    members = list(breakdowns[0]["members"])
    if any(list(b["members"]) != members for b in breakdowns):
        raise ValueError("the batches of an ensemble row ran different attacks")

    def cat(name: str, dim: int = 0) -> torch.Tensor:
        return torch.cat([b[name] for b in breakdowns], dim=dim)

    first_vote, first_worst, kept = cat("first_vote"), cat("first_worst"), cat("kept")
    ran = cat("ran", dim=1)
    per_attack = [
        {
            "attack": name,
            "gradient": ATTACKS[member(name).attack].gradient,
            "ran_on": int(ran[k].sum()),
            "broke_vote": int((first_vote == k).sum()),
            "broke_worst": int((first_worst == k).sum()),
            "kept": int((kept == k).sum()),
        }
        for k, name in enumerate(members)
    ]
    return {
        "members": members,
        "judging_draws": draws,
        "rule": RULE,
        "per_attack": per_attack,
        "unbroken_vote": int((first_vote < 0).sum()),
        "unbroken_worst": int((first_worst < 0).sum()),
    }
