"""scikit-learn's 8x8 ``digits`` set as [0,1] NCHW tensors with a fixed train/test split.

The set ships with scikit-learn, so it is the offline data behind the embedded model zoo
(``art_ssni.models.zoo``). Pixels are integers 0..16; we return ``x = pixels / 16`` as
float32 of shape (N, 1, 8, 8) and labels as int64.

Split: a stratified split with ``TEST_SIZE = 500`` test images (1,297 train), drawn by
``sklearn.model_selection.train_test_split(..., stratify=y, random_state=seed)``. It is a
pure function of ``seed`` and the data, so the same seed always gives the same split; the
shipped models were trained and evaluated on ``seed=0``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NUM_CLASSES", "TEST_SIZE", "load_digits"]

NUM_CLASSES = 10
TEST_SIZE = 500
_SPLITS = ("train", "test", "all")


def _split_indices(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=TEST_SIZE, stratify=y, random_state=seed, shuffle=True
    )
    return np.sort(train_idx), np.sort(test_idx)


def load_digits(split: str = "test", *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)`` for one split of the digits set.

    Args:
        split: ``"train"`` (1,297 images), ``"test"`` (500 images) or ``"all"`` (1,797, in
            scikit-learn's order).
        seed: seed of the stratified split; the zoo models use ``seed=0``.

    Returns:
        ``x`` float32 (N, 1, 8, 8) in [0, 1] and ``y`` int64 (N,), in ascending order of the
        original sample index.

    Raises:
        ValueError: for an unknown ``split``.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if split != "all":
        train_idx, test_idx = _split_indices(labels, seed)
        keep = train_idx if split == "train" else test_idx
        pixels, labels = pixels[keep], labels[keep]
    x = torch.from_numpy(np.ascontiguousarray(pixels / 16.0, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(labels))
    return x, y
