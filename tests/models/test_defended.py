"""DefendedClassifier (art_ssni.models.defended), what every attack and the runner talk to:
frozen in eval mode, normalising and resizing, reseeding, gradient modes, the levels and EPS
scores of each pass, its description, and the image dtypes it takes or refuses."""

import pytest
import torch

from art_ssni import DiffPure, EPSNorm, SSNISigmoid
from art_ssni._rng import SampleStreams, draw_call_seed
from art_ssni.evaluation.attacks import pgd_eot
from art_ssni.models.defended import DefendedClassifier

from tiny import TinyClassifier, defended


def test_defended_classifier_is_frozen_eval_and_on_the_right_device(diffusion):
    model = defended(diffusion)
    model.train()
    assert all(not p.requires_grad for p in model.parameters())
    assert not any(module.training for module in model.children())
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="mean and std"):
        DefendedClassifier(None, TinyClassifier(), mean=[0.5, 0.5, 0.5])


def test_defended_classifier_normalises_and_resizes(diffusion):
    classifier = TinyClassifier()
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    model = DefendedClassifier(None, classifier, mean, std)
    x = torch.rand(2, 3, 8, 8)
    expected = classifier(
        (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    )
    assert torch.allclose(model(x), expected)
    diffusion.image_shape = (3, 16, 16)
    big = DefendedClassifier(
        DiffPure(diffusion, t_star=4, steps=2, generator=0), classifier, purify_size=(16, 16)
    )
    assert big(x).shape == (2, 10)


class RandomLevels:
    """A noise policy whose levels come from the samples' streams, so they differ from pass
    to pass; it keeps every level it hands out."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, generator: SampleStreams) -> torch.Tensor:
        levels = (generator.rand((), device=x.device) * (self.top + 1)).long()
        self.calls.append(levels)
        return levels

    def __repr__(self) -> str:
        return f"RandomLevels({self.top})"


def test_record_levels_returns_the_levels_each_pass_used(diffusion, images):
    policy = RandomLevels(10)
    model = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=10, steps=2), TinyClassifier()
    )
    model.reseed(4)
    plain = [model(images[:4]), model(images[4:])]
    policy.calls.clear()
    model.reseed(4)
    with model.record_levels() as passes:
        recorded = [model(images[:4]), model(images[4:])]
    assert len(passes) == 2 and [p.tolist() for p in passes] == [c.tolist() for c in policy.calls]
    assert [p.shape for p in passes] == [(4,), (2,)] and len(set(torch.cat(passes).tolist())) > 1
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))  # recording changes nothing
    model(images)
    assert len(passes) == 2  # nothing is recorded outside the block
    with DefendedClassifier(None, TinyClassifier()).record_levels() as none:
        DefendedClassifier(None, TinyClassifier())(images)
    assert none == []


def test_reseed_makes_the_defence_repeat_itself(diffusion, images):
    model = defended(diffusion)
    model.reseed(11)
    first = [model(images), model(images)]
    model.reseed(11)
    second = [model(images), model(images)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])
    model.reseed(12)
    assert not torch.equal(model(images), first[0])
    with pytest.raises(ValueError, match="seed"):
        model.reseed(1.5)
    undefended = DefendedClassifier(None, TinyClassifier())
    undefended.reseed(3)
    assert torch.equal(undefended(images), TinyClassifier()(images))


def test_gradient_mode_restores_the_previous_mode_even_when_the_body_raises(diffusion):
    model = defended(diffusion, gradient="surrogate")
    with model.gradient_mode("bpda"):
        assert model.gradient == "bpda"
    assert model.gradient == "surrogate"
    with pytest.raises(RuntimeError, match="inside"):
        with model.gradient_mode("full"):
            assert model.gradient == "full"
            raise RuntimeError("inside")
    assert model.gradient == "surrogate"
    with pytest.raises(ValueError, match="gradient mode"):
        with model.gradient_mode("exact"):
            pass
    assert model.gradient == "surrogate"
    undefended = DefendedClassifier(None, TinyClassifier())
    with undefended.gradient_mode("bpda"):
        assert undefended.gradient is None


def test_policy_levels_scores_and_description(diffusion, stats, images):
    fixed = defended(diffusion)
    assert repr(fixed.policy) == "FixedNoise(t_star=10)"
    assert fixed.levels(images, 0).tolist() == [10] * 6
    assert fixed.scores(images, 0) is None
    assert fixed.describe() == {
        "method": "DiffPure",
        "classifier": "TinyClassifier",
        "t_star": 10,
        "gradient": "full",
        "sampler": "ddpm",
        "noise": "FixedNoise(t_star=10)",
        "votes": 1,
        "purify_size": None,
    }
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, t_star=10, tau=max(stats.std, 1e-3))
    ssni = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=10, steps=2), TinyClassifier()
    )
    scores = ssni.scores(images, 5)
    assert torch.equal(scores, policy.scores(images, 5)) and scores.shape == (6,)
    assert torch.equal(ssni.levels(images, 5), policy(images, 5))
    assert ssni.describe()["noise"] == repr(policy)
    undefended = DefendedClassifier(None, TinyClassifier())
    assert undefended.policy is None and undefended.levels(images) is None
    assert undefended.scores(images) is None
    assert undefended.describe()["method"] is None and undefended.describe()["t_star"] is None


def test_levels_and_scores_see_the_images_at_the_purification_size(diffusion, stats):
    diffusion.image_shape = (3, 16, 16)
    policy = RandomLevels(4)
    model = DefendedClassifier(
        DiffPure(diffusion, noise=policy, t_star=4, steps=2), TinyClassifier(), purify_size=(16, 16)
    )
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert model.levels(x, 0).shape == (3,)
    assert policy.calls[-1].shape == (3,)
    with model.record_levels() as passes:
        assert model(x).shape == (3, 10)
    assert [p.tolist() for p in passes] == [policy.calls[-1].tolist()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_defended_classifier_and_policy_accept_other_float_dtypes(dtype, diffusion, stats, images):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, 6, 0.0, tau=stats.std)
    purifier = DiffPure(diffusion, t_star=6, steps=2, noise=policy, generator=0)
    model = DefendedClassifier(purifier, TinyClassifier())
    x = images.to(dtype)
    if dtype == torch.float64:  # exact in float32, so the levels are those of float32
        assert torch.equal(policy(x, generator=3), policy(images, generator=3))
    logits = model(x)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad.dtype == dtype
    undefended = DefendedClassifier(None, TinyClassifier())
    y = torch.zeros(images.shape[0], dtype=torch.long)
    x_adv = pgd_eot(undefended, x, y, eps=0.1, step=0.1, iterations=1, eot=1)
    assert x_adv.dtype == dtype
    limit = 0.1 + (1e-2 if dtype != torch.float64 else 1e-9)
    assert float((x_adv.double() - x.double()).abs().max()) <= limit


def test_float64_gives_the_float32_logits(diffusion, images):
    model = DefendedClassifier(None, TinyClassifier())
    assert torch.allclose(model(images.double()), model(images))


def test_integer_images_are_refused_with_value_error(diffusion):
    model = DefendedClassifier(None, TinyClassifier())
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_named_samples_follow_a_tiled_batch_across_chunks(diffusion, images):
    """Inside ``samples(ids)`` the rows of calls are the batch tiled, whatever the chunking:
    row p of the tiled rows draws from the stream of (ids[p % N], p // N) under the one seed
    the block drew from the defence's generator on entry, so any chunking gives the same
    rows, and they are what the purifier gives for those keys and that seed (equal up to the
    float rounding of convolutions over batches of another size)."""
    model = defended(diffusion)
    ids = torch.tensor([50, 51, 52])
    rows = images[:3].repeat(3, 1, 1, 1)  # draw d of sample i is row 3 d + i
    chunkings = []
    for size in (4, 2, 9):
        model.reseed(6)
        with torch.no_grad(), model.samples(ids):
            chunkings.append(torch.cat([model.purify(chunk) for chunk in torch.split(rows, size)]))
    block_seed = draw_call_seed(torch.Generator().manual_seed(6))
    keys = torch.tensor([[int(ids[p % 3]), p // 3] for p in range(9)])
    with torch.no_grad():
        reference = model.purifier(rows, SampleStreams(block_seed, keys))
    for chunked in chunkings:
        torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-6)


def test_copies_of_a_sample_draw_apart_and_copy_zero_is_the_sample(diffusion, images):
    model = defended(diffusion)
    ids = torch.tensor([8, 3])
    with torch.no_grad():
        model.reseed(2)
        with model.samples(ids):
            tiled = model.purify(images[:2].repeat(3, 1, 1, 1)).view(3, 2, *images.shape[1:])
        model.reseed(2)
        with model.samples(ids):
            once = model.purify(images[:2])
        model.reseed(2)
        direct = model.purify(images[:2], sample_ids=ids)
    torch.testing.assert_close(tiled[0], once, rtol=0, atol=0)
    torch.testing.assert_close(direct, once, rtol=0, atol=0)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert float((tiled[a] - tiled[b]).abs().amax((1, 2, 3)).min()) > 1e-3


def test_samples_blocks_nest_count_rows_and_refuse_bad_ids(diffusion, images):
    model = defended(diffusion)
    assert model.sample_ids is None
    with torch.no_grad(), model.samples(torch.tensor([1, 2, 3])):
        model.purify(images[:2])
        assert model._keys(2, None, count=False).tolist() == [[1, 0], [2, 0]]
        assert model._keys(2, None, count=True).tolist() == [[3, 0], [1, 1]]
        with model.samples(torch.tensor([9])):
            assert model.sample_ids.tolist() == [9]
        assert model.sample_ids.tolist() == [1, 2, 3]
    assert model.sample_ids is None
    for bad, message in [
        (torch.tensor([1.0, 2.0]), "integer ids"),
        (torch.tensor([4, 4]), "repeat a key"),
        (torch.tensor([[1, 0], [2, 0]]), r"plain \(N,\) ids"),
    ]:
        with pytest.raises(ValueError, match=message), model.samples(bad):
            pass
    with pytest.raises(ValueError, match="batch of 2"):
        model(images[:2], sample_ids=torch.tensor([1, 2, 3]))


def test_levels_and_scores_use_the_named_samples(diffusion, stats, images):
    eps_norm = EPSNorm(diffusion, num_levels=5)
    policy = SSNISigmoid(eps_norm, stats, 6, 0.0, tau=stats.std)
    model = DefendedClassifier(
        DiffPure(diffusion, t_star=6, steps=2, noise=policy), TinyClassifier()
    )
    ids = torch.tensor([30, 31, 32, 33])
    with torch.no_grad():
        with model.samples(ids):
            named = model.scores(images[:4], 7)
        shuffled = model.scores(images[[2, 0, 3, 1]], 7, sample_ids=ids[[2, 0, 3, 1]])
        alone = model.scores(images[3:4], 7, sample_ids=ids[3:])
        by_position = model.scores(images[:4], 7)
    torch.testing.assert_close(shuffled, named[[2, 0, 3, 1]], rtol=1e-6, atol=0)
    torch.testing.assert_close(alone, named[3:], rtol=1e-6, atol=0)
    assert not torch.allclose(by_position, named)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_normalisation_is_refused(bad):
    for mean, std, name in [
        ([0.5, bad, 0.5], [0.2] * 3, "mean"),
        ([0.5] * 3, [0.2, bad, 0.2], "std"),
    ]:
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            DefendedClassifier(None, TinyClassifier(), mean, std)
    with pytest.raises(ValueError, match="one value per channel"):
        DefendedClassifier(None, TinyClassifier(), [0.5] * 3, [0.2] * 2)
    with pytest.raises(ValueError, match="mean must be numbers"):
        DefendedClassifier(None, TinyClassifier(), [True, 0.5, 0.5], [0.2] * 3)


def test_non_finite_logits_raise_naming_the_classifier(images):
    class Broken(TinyClassifier):
        def forward(self, x):
            out = super().forward(x)
            return torch.where(torch.arange(out.shape[0])[:, None] == 1, float("nan"), out)

    model = DefendedClassifier(None, Broken())
    with pytest.raises(ValueError, match=r"classifier Broken produced non-finite logits.*1 of 3"):
        model(images[:3])
    with pytest.raises(ValueError, match="classifier Broken"):
        model(images[:3].clone().requires_grad_(True))
