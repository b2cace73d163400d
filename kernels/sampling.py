"""Sort-free sampling of fp32 logit rows (reference for kernels/sampling_triton.py).

What it computes is the Sampler's rule (worker/engine/sampler.py, README "What logprobs mean"): the
processed logits z = logits / temperature; the tokens ranked by z, ties by the lower id; top-k keeps
the first k; top-p keeps a token iff the fp64 mass (under the top-k renormalized softmax) ranked
before it is < top_p; min-p keeps it iff exp(z - zmax) >= min_p (fp64); the top token always stays.
A sampled row draws argmax over the kept tokens of (z - lse) + Gumbel noise keyed by (row key, token)
(ties to the lower id); a greedy row keeps the raw argmax. Both report z[token] - lse, lse being
the logsumexp of the kept tokens, and how many tokens were kept.

How, without sorting. Each filter keeps a prefix of the ranking, so the kept set is every token
whose *order key* (the fp32 value as an order-preserving integer, `order_keys`) is above some key v,
plus the first n (by id) of the tokens whose key is v (`Prefix`). v is found by a search over
keys: each pass over the row evaluates 16 thresholds at once (the count and the fp64 mass of the
tokens above each) and narrows the bracket [lo, hi] holding v to two neighbouring thresholds. Half
of them split the bracket's keys evenly, so 11 passes reach one key from any start (2^32 keys); the
other half split its values evenly, from top-p's hint up (`thresholds`), because even keys crowd
around 0 (every binade holds as many keys) while a row's tokens crowd in a few binades. A bracket
holding a single token ends the search at once (typically after 3-5 passes). Top-k searches
counts; top-p then searches masses inside the top-k prefix (its norm is that prefix's mass); min-p
is one key known up front (`min_p_floor`), evaluated alongside.

Error analysis. Counts are exact, and so the top-k prefix and min-p's key are exactly the sorted
path's. Masses: a token's weight exp(z - zmax) is fp64 (relative error ~2^-53) as in the sorted path;
a mass is an fp64 sum over at most vocab tokens, in another order than the sorted path's cumsum, so
the two differ by at most ~vocab x 2^-53 relative (3e-11 at 256k, ~1e-13 typically): a top-p
boundary whose margin |mass before - top_p| is below that may land one token apart. The ties at the
boundary key are counted as mass_above + j x weight, against the cumsum's running sum: the same
bound. Tests use margins >= 1e-9. lse is fp32(zmax + log(kept mass)) from that fp64 mass, within an
fp32 ulp of the sorted path's fp32 logsumexp; a token's score (z - lse) + noise can therefore differ
in its last bit, which changes the draw only where two kept tokens' scores tie to fp32 rounding.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

# Counter-based noise, bit for bit worker/engine/sampling_noise.py's (kernels import nothing from the
# worker; tests/kernels/test_sampling_triton.py pins the two equal): splitmix64's finalizer of
# key + token x GOLDEN, its top NOISE_BITS bits as a uniform in (0, 1), then Gumbel(0, 1).
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
NOISE_BITS = 23

THRESHOLDS = 16  # evaluated per pass over a row
EVEN_KEYS = 8  # thresholds of a pass that split the bracket's keys evenly
SEARCH_PASSES = 11  # per search: 8^11 >= 2^32 keys
FLOAT32_MAX = 3.4028234663852886e38
KEY_FLOOR = -(2**31)  # below every order key: a prefix that keeps everything
# exp(d) is 0 in fp64 for d <= -746: such tokens weigh nothing, so top-p never cuts below zmax - 746.
ZERO_WEIGHT_BELOW = 746.0


class SampledRows(NamedTuple):
    token_ids: torch.Tensor  # [rows] int64
    logprobs: torch.Tensor  # [rows] fp32: z[token] - lse of the kept tokens
    support_sizes: torch.Tensor  # [rows] int64: tokens kept


@dataclass(frozen=True, slots=True)
class SampleRows:
    """What to draw in each row of a batch, on the host (one entry per row). Temperatures, top_p and
    min_p are kept at their fp32 values (the wire type), the values every path compares against."""

    temperatures: list[float]  # 1.0 for greedy rows: their logprobs are those of temperature 1
    top_ks: list[int]  # 0: off
    top_ps: list[float]  # 1.0: off
    min_ps: list[float]  # 0.0: off
    noise_keys: list[int]  # 63-bit noise keys; unused in greedy rows
    greedy: list[bool]  # take the raw argmax instead of drawing

    def __post_init__(self) -> None:
        for name in ("temperatures", "top_ps", "min_ps"):
            object.__setattr__(self, name, array("f", getattr(self, name)).tolist())

    def top_k(self, row: int, vocab: int) -> int:
        """top-k as the search sees it: 0 when off or when it keeps the whole vocabulary."""
        k = self.top_ks[row]
        return k if 0 < k < vocab else 0

    def is_processed(self, row: int, vocab: int) -> bool:
        """Whether the row's processed logits differ from its raw ones (else lse is the raw one)."""
        return (
            self.temperatures[row] != 1.0
            or self.top_k(row, vocab) > 0
            or self.top_ps[row] < 1.0
            or self.min_ps[row] > 0.0
        )

    def search_passes(self, vocab: int) -> int:
        """Passes over the logits that settle every row: 11 per search (top-k, then top-p), 1 when
        the row only needs its kept mass (temperature, min-p), none when it is unprocessed."""
        most = 0
        for row in range(len(self.temperatures)):
            searches = (self.top_k(row, vocab) > 0) + (self.top_ps[row] < 1.0)
            needs = SEARCH_PASSES * searches if searches else int(self.is_processed(row, vocab))
            most = max(most, needs)
        return most


@dataclass(frozen=True, slots=True)
class Prefix:
    """A prefix of the ranking: every token whose order key is above `key`, then the first `ties`
    (by id) of the `group` tokens whose key is `key`. count: tokens kept; mass: their fp64 weight."""

    key: int
    ties: int
    group: int
    count: int
    mass: float

    def tighter(self, other: Prefix) -> Prefix:
        """The shorter of two prefixes of one ranking (their intersection)."""
        if self.key != other.key:
            return self if self.key > other.key else other
        return self if self.ties <= other.ties else other


def order_keys(z: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as the fp32 values are; -0.0 and +0.0 share key 0 (they tie in a sort)."""
    bits = z.contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).masked_fill(z == 0, 0)


def key_values(keys: torch.Tensor) -> torch.Tensor:
    """The fp32 values of order keys (inverse of order_keys)."""
    bits = torch.where(keys < 0, keys ^ 0x7FFFFFFF, keys).to(torch.int32)
    return bits.view(torch.float32)


def _key_value(key: int) -> float:
    return float(key_values(torch.tensor([key]))[0])


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def noise_bits(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] int64 in [0, 2^NOISE_BITS): sampling_noise.uniform_bits."""
    tokens = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    x = keys[:, None] + tokens[None, :] * _signed(GOLDEN)  # int64 products wrap modulo 2^64
    x = (x ^ _shift_right(x, 30)) * _signed(MIX1)
    x = (x ^ _shift_right(x, 27)) * _signed(MIX2)
    return _shift_right(x ^ _shift_right(x, 31), 64 - NOISE_BITS)


def gumbel_noise_torch(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] fp32 Gumbel(0, 1) noise: -log(-log((bits + 0.5) / 2^23))."""
    uniforms = (noise_bits(keys, vocab).to(torch.float32) + 0.5) * (1.0 / (1 << NOISE_BITS))
    return -torch.log(-torch.log(uniforms))


def min_p_floor(zmax: float, min_p: float) -> int:
    """The largest order key that min-p removes: exp(value - zmax) < min_p in fp64 (KEY_FLOOR when
    min-p is off). The test is monotone in the value, so a bisection over keys finds it."""
    if min_p <= 0.0:
        return KEY_FLOOR
    lo, hi = int(order_keys(torch.tensor([-math.inf]))[0]), int(order_keys(torch.tensor([zmax]))[0])
    for _ in range(32):  # exp(-inf) = 0 fails, exp(0) = 1 passes: keys in between, < 2^32 of them
        mid = lo + (hi - lo) // 2
        fails = torch.exp(torch.tensor(_key_value(mid), dtype=torch.float64) - zmax) < min_p
        lo, hi = (mid, hi) if fails else (lo, mid)
    return lo


def top_p_floor(zmax: float) -> int:
    """An order key below which every token weighs exactly 0 in fp64: the largest fp32 value <= zmax - 746."""
    limit = zmax - ZERO_WEIGHT_BELOW
    value = torch.tensor(limit, dtype=torch.float64).float()
    return int(order_keys(value[None])[0]) - int(float(value) > limit)


def top_p_hint(zmax: float, top_p: float, vocab: int) -> float:
    """A value the top-p boundary lies above: the tokens below it weigh < (1 - top_p) / e in all
    (each < exp(value - zmax), and the norm is >= 1, zmax's own weight), so cutting there would
    keep a mass > top_p. Only guides where thresholds go: never a bound the result depends on."""
    return zmax + math.log((1.0 - top_p) / vocab) - 1.0


def thresholds(lo: int, hi: int, probe: int, hint: float = -math.inf) -> list[int]:
    """The 16 keys one pass evaluates: lo itself (and min-p's key, as a probe, when it is inside the
    bracket), the keys splitting (lo, hi) into 8 even parts, and the rest at evenly spaced values
    between max(lo's value, hint) and hi's value (lo where such a key falls outside (lo, hi))."""
    with_probe = lo < probe < hi
    even = [lo + j * (hi - lo) // EVEN_KEYS for j in range(EVEN_KEYS)]
    head = [lo, probe, *even[1:]] if with_probe else even
    spaced = THRESHOLDS - len(head)
    low, high = max(_finite_or_lowest(_key_value(lo)), hint), _key_value(hi)
    values = [low + (high - low) * i / (spaced + 1) for i in range(1, spaced + 1)]
    keys = order_keys(torch.tensor(values, dtype=torch.float64).float()).tolist()
    if not math.isfinite(high - low):
        keys = [lo] * spaced
    return head + [key if lo < key < hi else lo for key in keys]


def _finite_or_lowest(value: float) -> float:
    """Keys below -inf's read as NaN: the bracket's values start at the lowest finite fp32 there."""
    return value if math.isfinite(value) else -FLOAT32_MAX


class _Row:
    """A row's order keys and fp64 weights exp(z - zmax)."""

    def __init__(self, z: torch.Tensor, zmax: float) -> None:
        self.zmax = zmax
        self.keys = order_keys(z)
        self.weights = torch.exp(z.double() - zmax)

    def above(self, key: int) -> tuple[int, float]:
        """Count and mass of the tokens whose key is above `key`."""
        mask = self.keys > key
        return int(mask.sum()), float(self.weights[mask].sum())

    def weight(self, key: int) -> float:
        """The weight of a token whose key is `key`."""
        return float(torch.exp(torch.tensor(_key_value(key), dtype=torch.float64) - self.zmax))


def _search(
    row: _Row,
    lo: int,
    hi: int,
    probe: int,
    keeps_above: Callable[[int, float], bool],
    ties_kept: Callable[[int, float, int, float], int],
    hint: float = -math.inf,
) -> tuple[Prefix, int]:
    """The prefix a filter keeps, and the key below it (where a following search may start).

    keeps_above(count, mass): whether the filter keeps the first token below a threshold whose tokens
    above number `count` and weigh `mass` (monotone: true for high thresholds). Invariant: false at
    lo, true at hi (nothing is above zmax's key). ties_kept(count_above, mass_above, group, weight):
    how many of the `group` tokens at the boundary key, each weighing `weight`, the filter keeps."""
    count_hi, mass_hi = 0, 0.0
    for _ in range(SEARCH_PASSES):
        with_probe = lo < probe < hi
        keys = thresholds(lo, hi, probe, hint)
        stats = [row.above(key) for key in keys]
        kept = [keeps_above(*s) for s in stats]
        if kept[0]:  # lo was min-p's key, and this filter keeps all that min-p keeps
            return Prefix(lo, 0, 0, *stats[0]), lo
        if with_probe and kept[1]:  # the same at min-p's key, evaluated as a probe
            return Prefix(probe, 0, 0, *stats[1]), probe
        below = max((j for j in range(THRESHOLDS) if not kept[j]), key=lambda j: keys[j])
        lo, (count_lo, mass_lo) = keys[below], stats[below]
        above = [j for j in range(THRESHOLDS) if kept[j]]
        if above:
            j = min(above, key=lambda j: keys[j])
            hi, (count_hi, mass_hi) = keys[j], stats[j]
        if hi - lo == 1:  # one key left: v = hi, its tokens tied
            group, weight = count_lo - count_hi, row.weight(hi)
            ties = min(max(ties_kept(count_hi, mass_hi, group, weight), 1), group)
            return Prefix(hi, ties, group, count_hi + ties, mass_hi + ties * weight), lo
        if count_lo - count_hi == 1:  # one token between lo and hi: it is the last one kept
            return Prefix(lo, 0, 0, count_lo, mass_lo), lo
    raise AssertionError("11 passes of 8 even thresholds narrow any bracket of int32 keys to one key")


def top_k_keeps(top_k: int) -> Callable[[int, float], bool]:
    """Whether top-k keeps the first token below a threshold that `count` tokens are above."""
    return lambda count, mass: count < top_k


def top_k_ties(top_k: int) -> Callable[[int, float, int, float], int]:
    """Of the tied tokens at the boundary, top-k keeps as many as it has room for."""
    return lambda count_above, mass_above, group, weight: top_k - count_above


def top_p_ties(top_p: float, norm: float) -> Callable[[int, float, int, float], int]:
    """Of the tied tokens at the boundary, the j-th (from 0) stays iff mass_above + j x weight is
    below top_p x norm."""
    limit = top_p * norm

    def ties_kept(count_above: int, mass_above: float, group: int, weight: float) -> int:
        before = mass_above + torch.arange(group, dtype=torch.float64) * weight
        return int((before < limit).sum())

    return ties_kept


def kept_prefix(z: torch.Tensor, top_k: int, top_p: float, min_p: float) -> Prefix:
    """The processed distribution's kept tokens of one row of processed logits z (fp32 [vocab]);
    top_k: 0 = off (and < vocab), top_p: 1 = off, min_p: 0 = off."""
    zmax = float(z.max())
    row = _Row(z, zmax)
    zkey = int(order_keys(z.max()[None])[0])
    min_p_key = min_p_floor(zmax, min_p)
    if not top_k and top_p >= 1.0:
        return Prefix(min_p_key, 0, 0, *row.above(min_p_key))
    keep = Prefix(KEY_FLOOR, 0, 0, z.numel(), math.nan)
    lo = top_p_floor(zmax)
    if top_k:
        start = KEY_FLOOR if top_p < 1.0 else min_p_key  # top-p needs the whole top-k set's mass
        keep, lo_k = _search(row, start, zkey, KEY_FLOOR, top_k_keeps(top_k), top_k_ties(top_k))
        if top_p >= 1.0:
            return keep
        norm = keep.mass
        lo = max(lo, lo_k)
    else:
        norm = row.above(lo)[1]  # everything weighing anything is above lo
    limit = top_p * norm
    hint = top_p_hint(zmax, top_p, z.numel())
    found, _ = _search(
        row, lo, zkey, min_p_key, lambda count, mass: mass < limit, top_p_ties(top_p, norm), hint
    )
    return keep.tighter(found)


def kept_mask(keys: torch.Tensor, prefix: Prefix) -> torch.Tensor:
    """Which tokens (order keys [vocab], in id order) the prefix keeps."""
    tied = keys == prefix.key
    rank = torch.cumsum(tied.long(), 0) - tied.long()  # among the tied tokens, by id
    return (keys > prefix.key) | (tied & (rank < prefix.ties))


def sample_rows_torch(
    logits: torch.Tensor,  # [rows, vocab] fp32
    greedy: torch.Tensor,  # [rows] int64: argmax of the raw logits (softmax_stats)
    raw_lse: torch.Tensor,  # [rows] fp32: logsumexp of the raw logits (softmax_stats)
    rows: SampleRows,
) -> SampledRows:
    """Each row's token, processed logprob and support size, row by row."""
    num_rows, vocab = logits.shape
    tokens, logprobs, sizes = [], [], []
    for i in range(num_rows):
        temperature = rows.temperatures[i]
        z = logits[i].float()
        if temperature != 1.0:
            z = z / torch.tensor(temperature, dtype=torch.float32)
        if rows.is_processed(i, vocab):
            prefix = kept_prefix(z, rows.top_k(i, vocab), rows.top_ps[i], rows.min_ps[i])
            lse = torch.tensor(float(z.max()) + math.log(prefix.mass), dtype=torch.float64).float()
        else:
            prefix = Prefix(KEY_FLOOR, 0, 0, vocab, math.nan)
            lse = raw_lse[i].float()
        token = int(greedy[i])
        if not rows.greedy[i]:
            kept = kept_mask(order_keys(z), prefix)
            noise = gumbel_noise_torch(torch.tensor([rows.noise_keys[i]]), vocab)[0]
            token = int(torch.where(kept, (z - lse) + noise, -math.inf).argmax())
        tokens.append(token)
        logprobs.append(z[token] - lse)
        sizes.append(prefix.count)
    return SampledRows(
        torch.tensor(tokens, dtype=torch.int64),
        torch.stack(logprobs) if logprobs else torch.empty(0),
        torch.tensor(sizes, dtype=torch.int64),
    )
