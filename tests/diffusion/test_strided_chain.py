"""The sampler's mechanisms for heterogeneous noise (art_ssni.diffusion.sampler): strided level
tables, forward jumps, and run_chain's hook draws and per-sample slices."""

import pytest
import torch

from art_ssni import DiffusionModel
from art_ssni._rng import SampleStreams
from art_ssni.diffusion import forward_jump, run_chain, stride_table

from tiny import TinyEpsNet


def test_stride_table_values():
    table = stride_table(torch.tensor([200, 150, 0, 7, 9]), torch.tensor([100, 75, 0, 7, 0]), 2)
    assert table.shape == (5, 51)
    assert table[0].tolist() == list(range(200, 99, -2))
    row = table[1].tolist()
    assert row[0] == 150 and row[38:] == [75] * 13  # ceil(75 / 2) = 38 steps, then repeats
    assert all(a > b for a, b in zip(row[:38], row[1:39]))
    assert table[2].tolist() == [0] * 51 and table[3].tolist() == [7] * 51
    assert table[4, :6].tolist() == [9, 7, 5, 4, 2, 0]  # 9 in ceil(9 / 2) = 5 steps, half up
    one = stride_table(torch.tensor([150]), torch.tensor([75]), 100)
    assert one.tolist() == [[150, 75]]  # a stride larger than the span: one step
    with pytest.raises(ValueError, match="stride"):
        stride_table(torch.tensor([4]), torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="low <= high"):
        stride_table(torch.tensor([4]), torch.tensor([5]), 1)


def test_forward_jump_composes_single_ddpm_transitions():
    model = DiffusionModel(TinyEpsNet(), image_shape=(3, 8, 8))
    betas = 1 - model.schedule.alphas_cumprod[1:] / model.schedule.alphas_cumprod[:-1]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t, u = torch.tensor([40, 97]), torch.tensor([3, 3])
    got = forward_jump(model, x, t, u, torch.zeros_like(x))
    for i, level in enumerate(t.tolist()):
        keep = torch.prod(1 - betas[level : level + 3]).sqrt()
        torch.testing.assert_close(got[i], keep.float() * x[i])
    z = torch.ones_like(x)
    var = (forward_jump(model, x, t, u, z) - got)[:, 0, 0, 0] ** 2
    expected = 1 - torch.stack([torch.prod(1 - betas[s : s + 3]) for s in t.tolist()])
    torch.testing.assert_close(var, expected.float(), atol=1e-7, rtol=1e-5)


def test_run_chain_hands_hook_draws_and_aligned_per_sample_slices():
    seen = []

    def step(x, t, s, hook_noise, per_sample):
        seen.append((t.tolist(), len(hook_noise), per_sample["tag"].flatten().tolist()))
        assert all(n.shape == x.shape for n in hook_noise)
        return x + per_sample["tag"], torch.zeros(())

    table = stride_table(torch.tensor([4, 2, 3]), torch.tensor([0, 0, 0]), 1)
    tag = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1, 1)
    out = run_chain(step, torch.zeros(3, 1, 2, 2), table, per_sample={"tag": tag}, hook_draws=2)
    assert seen == [
        ([4, 2, 3], 2, [10.0, 20.0, 30.0]),
        ([3, 1, 2], 2, [10.0, 20.0, 30.0]),
        ([2, 1], 2, [10.0, 30.0]),  # the running samples' own slices
        ([1], 2, [10.0]),
    ]
    assert out[:, 0, 0, 0].tolist() == [40.0, 40.0, 90.0]
    with pytest.raises(ValueError, match="hook_draws"):
        run_chain(step, torch.zeros(3, 1, 2, 2), table, hook_draws=-1)
    with pytest.raises(ValueError, match="per-sample tensor 'tag'"):
        run_chain(step, torch.zeros(3, 1, 2, 2), table, per_sample={"tag": tag[:2]})


def test_run_chain_draws_the_same_numbers_whichever_samples_run():
    """A sample's draws do not depend on which of its batch-mates still run."""

    def step(x, t, s, hook_noise, per_sample):
        return x + hook_noise[0], torch.ones(())

    x = torch.zeros(2, 1, 2, 2)
    both = stride_table(torch.tensor([3, 3]), torch.tensor([0, 0]), 1)
    mixed = stride_table(torch.tensor([3, 1]), torch.tensor([0, 0]), 1)
    a = run_chain(step, x, both, generator=SampleStreams(0, torch.arange(2)), hook_draws=1)
    b = run_chain(step, x, mixed, generator=SampleStreams(0, torch.arange(2)), hook_draws=1)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    own = SampleStreams(0, torch.arange(2))
    z = [own.randn((1, 2, 2), device="cpu") for _ in range(2)]  # step 1: z, then hook draw
    torch.testing.assert_close(b[1], z[0][1] + z[1][1], rtol=0, atol=0)
    alone = run_chain(
        step, x[:1], both[:1], generator=SampleStreams(0, torch.arange(1)), hook_draws=1
    )
    torch.testing.assert_close(alone[0], a[0], rtol=0, atol=0)
