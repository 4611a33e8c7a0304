"""The runner names every batch's samples by their indices in the evaluated images, so each
image draws from its own random stream in whichever batch it is evaluated."""

import torch

from art_ssni import DiffPure
from art_ssni.evaluation.runner import Evaluation, Row
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier


class Recording(DefendedClassifier):
    """Keeps the stream keys of every forward call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[int]] = []

    def forward(self, x, *, sample_ids=None):
        self.seen.append(self._keys(x.shape[0], sample_ids, count=False)[:, 0].tolist())
        return super().forward(x, sample_ids=sample_ids)


def test_each_batch_is_named_by_its_image_indices(tmp_path, diffusion):
    model = Recording(DiffPure(diffusion, t_star=4, steps=2), TinyClassifier())
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(5)
    rows = [Row("diffpure-fixed", "DiffPure", model, "none")]
    Evaluation(tmp_path, {}, batch_size=2, draws=1, seed=0, progress=False).run(rows, x, y)
    assert model.seen == [[0, 1], [0, 1], [2, 3], [2, 3], [4], [4]]  # clean and adversarial
    assert model.sample_ids is None
