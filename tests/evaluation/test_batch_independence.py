"""A sample's numbers do not depend on how the evaluation is batched.

Every draw of an evaluation, the defence's noise and levels and the attack's random starts,
comes from the sample's own stream keyed by its index in the evaluated images: evaluating
the images in one batch, in uneven batches or one at a time, with any chunking of the rows,
gives every sample the same adversarial example, predictions and levels."""

import pytest
import torch

from art_ssni import DiffPure, EPSNorm, SSNISigmoid
from art_ssni.evaluation.runner import Evaluation, Row, evaluate_batch
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier

N = 7
ATTACKS = {
    "pgd": ("pgd-eot", {"eps": 0.05, "step": 0.02, "iterations": 2, "eot": 3, "restarts": 2}),
    "apgd": ("apgd-eot", {"eps": 0.05, "iterations": 3, "eot": 2}),
    "selector": ("selector-aware", {"eps": 0.05, "step": 0.02, "iterations": 2, "eot": 2}),
    "ensemble": ("ensemble", {"eps": 0.05, "step": 0.02, "iterations": 2, "eot": 1}),
}


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.rand(N, 3, 8, 8, generator=g), torch.randint(0, 10, (N,), generator=g)


def _defence(diffusion, stats):
    torch.manual_seed(0)
    policy = SSNISigmoid(EPSNorm(diffusion, num_levels=5), stats, 8, tau=max(stats.std, 1e-3))
    purifier = DiffPure(diffusion, t_star=8, steps=3, surrogate_steps=1, noise=policy)
    return DefendedClassifier(purifier, TinyClassifier())


def _row(diffusion, stats, attack: str, max_rows: int) -> Row:
    name, budget = ATTACKS[attack]
    if name != "ensemble":
        budget = {**budget, "max_rows": max_rows}
    return Row(f"ssni-{attack}", "DiffPure + SSNI-N", _defence(diffusion, stats), name, budget)


def _by_sample(row: Row, x, y, splits, draws=3):
    records = []
    for part in torch.split(torch.arange(N), splits):
        records.append(evaluate_batch(row, x[part], y[part], seed=11, draws=draws, ids=part))
    return {
        key: torch.cat([r[key] for r in records], -1 if key.startswith(("preds", "levels")) else 0)
        for key in ("preds_clean", "preds_adv", "levels_clean", "levels_adv", "delta_linf")
    }


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_one_batch_uneven_batches_and_single_images_agree(diffusion, stats, attack):
    x, y = _data()
    whole = _by_sample(_row(diffusion, stats, attack, max_rows=256), x, y, [N])
    assert float(whole["delta_linf"].max()) > 0  # the attack moved the images
    for splits, max_rows in (([3, 4], 256), ([1] * N, 256), ([2, 5], 4)):
        parts = _by_sample(_row(diffusion, stats, attack, max_rows=max_rows), x, y, splits)
        for key, value in whole.items():
            torch.testing.assert_close(parts[key], value, rtol=0, atol=1e-6, msg=key)


def test_the_batch_size_changes_no_row_of_an_evaluation(tmp_path, diffusion, stats):
    x, y = _data()
    rows = {}
    for batch_size in (N, 3):
        row = _row(diffusion, stats, "pgd", max_rows=256)
        run = Evaluation(tmp_path / str(batch_size), {}, batch_size=batch_size, draws=3, seed=2,
                         progress=False)  # fmt: skip
        (rows[batch_size],) = run.run([row], x, y)
        rows[batch_size].pop("seconds_per_image")
    assert rows[3] == rows[N]


def test_without_ids_draws_follow_positions_as_before(diffusion, stats):
    """Unnamed samples (a user's own call) keep the position-keyed streams, and the same seed
    gives the same numbers."""
    x, y = _data()
    row = _row(diffusion, stats, "pgd", max_rows=256)
    first = evaluate_batch(row, x, y, seed=4, draws=2)
    again = evaluate_batch(row, x, y, seed=4, draws=2)
    torch.testing.assert_close(first["levels_clean"], again["levels_clean"], rtol=0, atol=0)
    torch.testing.assert_close(first["preds_adv"], again["preds_adv"], rtol=0, atol=0)
