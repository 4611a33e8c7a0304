"""Explicit randomness: every stochastic call takes a seed or a ``torch.Generator``."""

from __future__ import annotations

import torch

SeedLike = int | torch.Generator | None


def as_generator(seed: SeedLike, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator from a seed (or the generator itself); ``None`` means torch's global RNG."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(
            f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _draw(fn, shape, generator, device, dtype) -> torch.Tensor:
    if isinstance(generator, SampleStreams):
        if len(shape) == 0 or shape[0] != len(generator):
            raise ValueError(
                f"a draw of shape {tuple(shape)} from {len(generator)} per-sample streams: "
                "the first dimension must be the samples"
            )
        fill = generator.randn if fn is torch.randn else generator.rand
        return fill(tuple(shape[1:]), device=device, dtype=dtype)
    if generator is None or generator.device == torch.device(device):
        return fn(shape, generator=generator, device=device, dtype=dtype)
    return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws; a generator on another device draws there and moves the result.
    Per-sample streams (:class:`SampleStreams`) draw row b of the result from stream b."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform draws in [0, 1), with the same device handling as :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)


_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """SplitMix64's output function (Steele, Lea and Flood, OOPSLA 2014): a bijection of
    64-bit integers in which every input bit changes about half of the output bits."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_seed(call_seed: int, sample: int, copy: int = 0) -> int:
    """The 64-bit seed of one sample's stream in one call: the call seed, the sample's key and
    (for a repeated row) its copy number, mixed; copy 0 is the sample itself."""
    seed = _mix64(_mix64(call_seed & _MASK64) ^ (sample & _MASK64))
    return seed if copy == 0 else _mix64(seed ^ (copy & _MASK64))


def draw_call_seed(generator: torch.Generator | SampleStreams | None) -> int:
    """One call seed from ``generator`` (torch's global RNG for None): successive calls on one
    generator get different seeds, and the same generator state gives the same seed. From
    per-sample streams it is :meth:`SampleStreams.next_seed`, which no sample's draws move."""
    if isinstance(generator, SampleStreams):
        return generator.next_seed()
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def check_sample_ids(sample_ids: object, batch: int) -> torch.Tensor:
    """Sample keys as a (B, 2) int64 CPU tensor of (id, copy): ``sample_ids`` is (B,) ids
    (copy 0) or (B, 2) pairs. Refuses another length, a non-integer tensor and a repeated key
    (rows with one key would get identical draws)."""
    ids = torch.as_tensor(sample_ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"sample_ids must be integer ids, got dtype {ids.dtype}")
    if ids.dim() == 1:
        ids = torch.stack([ids, torch.zeros_like(ids)], 1)
    if ids.dim() != 2 or ids.shape != (batch, 2):
        raise ValueError(
            f"sample_ids must be (B,) ids or (B, 2) (id, copy) pairs for the batch of {batch}, "
            f"got shape {tuple(torch.as_tensor(sample_ids).shape)}"
        )
    ids = ids.detach().to("cpu", torch.long)
    if int(torch.unique(ids, dim=0).shape[0]) != batch:
        raise ValueError(
            "sample_ids repeat a key: rows with one key would get identical draws; give a "
            "repeated sample (id, copy) pairs with distinct copies"
        )
    return ids


def tiled_keys(ids: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """(count, 2) keys of rows start..start+count-1 of the N samples ``ids`` tiled (as
    ``x.repeat(draws, 1, 1, 1)`` tiles a batch): row p is sample ids[p % N], copy p // N."""
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"ids must be a non-empty 1-D tensor, got shape {tuple(ids.shape)}")
    rows = torch.arange(start, start + count)
    return torch.stack([ids[rows % ids.numel()], rows // ids.numel()], 1)


class SampleStreams:
    """One random stream per sample of a batch, so no sample's draws depend on its batch-mates.

    Row b's stream is a ``torch.Generator`` on ``device`` seeded with
    :func:`stream_seed` (``call_seed``, key b): a draw for a set of rows takes each row's next
    values from that row's own stream, so a sample's draws depend only on the call seed, its key
    and its own earlier draws (never on the batch size, its position or the other samples, when
    the key is its id). Keys are the sample ids the caller gives or, without them, the positions
    in the batch.
    """

    def __init__(
        self, call_seed: int, keys: torch.Tensor, *, device: torch.device | str = "cpu"
    ) -> None:
        self.keys = check_sample_ids(keys, len(keys))
        self.call_seed = int(call_seed)
        self.device = torch.device(device)
        self._streams = [
            torch.Generator(device=self.device).manual_seed(stream_seed(self.call_seed, i, c))
            for i, c in self.keys.tolist()
        ]
        self._seeds_taken = 0

    @classmethod
    def for_call(
        cls, generator: RandomSource, batch: int, sample_ids: object | None = None
    ) -> SampleStreams:
        """The streams of one call on ``batch`` samples: one call seed drawn from ``generator``
        (a seed, a generator or None: torch's global RNG), keys from ``sample_ids`` or the
        positions 0..B-1. The streams live on the generator's device (the CPU for a seed).
        ``generator`` may itself be per-sample streams: the call seed is then their next seed."""
        if not isinstance(generator, SampleStreams):
            generator = as_generator(generator)
        keys = torch.arange(batch) if sample_ids is None else check_sample_ids(sample_ids, batch)
        device = generator.device if generator is not None else torch.device("cpu")
        return cls(draw_call_seed(generator), keys, device=device)

    def __len__(self) -> int:
        return len(self._streams)

    def next_seed(self) -> int:
        """A fresh seed below 2**62 for a call made on behalf of all the samples (a defence's
        EPS measure, an ensemble member): the k-th is a function of the call seed and k
        only, so it is the same whatever the batch holds."""
        self._seeds_taken += 1
        return _mix64(_mix64(self.call_seed & _MASK64) ^ _mix64(self._seeds_taken)) >> 2

    def subset(self, rows: torch.Tensor, call_seed: int) -> SampleStreams:
        """Fresh streams for the samples ``rows`` (indices into this call's samples), under
        ``call_seed`` and keyed as here: a sample keeps its key when a call sends a subset."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        return SampleStreams(call_seed, self.keys[rows], device=self.device)

    def __repr__(self) -> str:
        return f"SampleStreams(call_seed={self.call_seed}, samples={len(self)})"

    def _draw(self, fill: str, shape, rows, device, dtype) -> torch.Tensor:
        index = range(len(self)) if rows is None else torch.as_tensor(rows).tolist()
        out = torch.empty((len(index), *shape), device=self.device, dtype=dtype)
        for j, i in enumerate(index):
            getattr(out[j], fill)(generator=self._streams[i])
        return out.to(device)

    def randn(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(R, *shape) standard normal draws: row j is the next draw of stream ``rows[j]``
        (every stream, in order, when ``rows`` is None), moved to ``device``."""
        return self._draw("normal_", shape, rows, device, dtype)

    def rand(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Uniform draws in [0, 1), row by row as :meth:`randn`."""
        return self._draw("uniform_", shape, rows, device, dtype)


RandomSource = SeedLike | SampleStreams
"""What a stochastic call draws from: a seed, a generator, None (torch's global RNG) or the
per-sample streams of the call."""


def as_streams(source: RandomSource, batch: int) -> SampleStreams:
    """The call's per-sample streams: ``source`` itself (checked to hold ``batch`` streams), or
    streams keyed by position drawn from a seed, a generator or torch's global RNG."""
    if isinstance(source, SampleStreams):
        if len(source) != batch:
            raise ValueError(f"the call has {batch} samples but {len(source)} random streams")
        return source
    return SampleStreams.for_call(source, batch)


def as_source(source: RandomSource, device: torch.device | str = "cpu") -> RandomSource:
    """What an attack draws from: per-sample streams as they are (row b of every draw comes
    from stream b), anything else as :func:`as_generator` makes it."""
    if isinstance(source, SampleStreams):
        return source
    return as_generator(source, device)


def int_seed(source: torch.Generator | SampleStreams | None) -> int:
    """One seed below 2**31 - 1 drawn from ``source`` (a generator, per-sample streams, or None
    for torch's global RNG), for a call that takes an integer seed."""
    if isinstance(source, SampleStreams):
        return source.next_seed() % (2**31 - 1)
    place = source.device if source is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=source, device=place))
