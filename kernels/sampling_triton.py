"""Sort-free sampling of fp32 logit rows on the GPU (reference: kernels/sampling.py, which states the
rule, the threshold search and its error bound).

Why: the sorted path sorts every row, builds fp64 softmax + cumsum + scatter over [rows, vocab] and
draws its noise with ~10 int64 elementwise kernels (H200, 256 x 128k: 3.5 ms at temperature 1, 8.2 ms
with top_p). Here the logits are read once per search pass and once to draw, never sorted, and the
noise is hashed in registers.

Launches for R rows of V logits, each row cut into C = ceil(V / CHUNK) chunks:
- _init (R programs): zmax, min-p's key, the row's first bracket and its 16 thresholds
  (kernels/sampling.py `kept_prefix`, `thresholds`);
- `passes` times (SampleRows.search_passes: 0, 1, 11 or 22): _count (R x C) counts and weighs, in
  fp64, the chunk's tokens above each threshold; _decide (R) sums the chunks in chunk order and
  narrows the bracket, or settles the row's kept prefix (a settled row's programs do nothing), and
  writes the next pass's thresholds;
- _draw (R x C): per chunk, the best (z - lse) + Gumbel noise among kept tokens (the first on a tie);
- _finish (R): the row's token (first chunk holding the best, or the greedy argmax), its logprob
  z - lse and the support size.
Batch-invariant by construction: the chunks follow the vocabulary size only, every reduction runs in
a fixed order inside one program, and a row's search reads nothing of another row (extra passes
launched for other rows leave a settled row untouched).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.sampling import (
    EVEN_KEYS,
    FLOAT32_MAX,
    GOLDEN,
    KEY_FLOOR,
    MIX1,
    MIX2,
    NOISE_BITS,
    THRESHOLDS,
    ZERO_WEIGHT_BELOW,
    SampledRows,
    SampleRows,
)

CHUNK = 4096  # logits per program of the per-chunk kernels (as softmax_stats_triton)
BLOCK = 512  # logits per step inside a chunk of _draw
COUNT_BLOCK = 64  # logits per step inside a chunk of _count: its [16, BLOCK] partial sums stay in registers
COUNT_WARPS = 1  # one warp: the per-block skip test reduces without a barrier

_THRESHOLDS = tl.constexpr(THRESHOLDS)
_EVEN_KEYS = tl.constexpr(EVEN_KEYS)
_FLOAT32_MAX = tl.constexpr(FLOAT32_MAX)
_KEY_FLOOR = tl.constexpr(KEY_FLOOR)
_NEG_INF_KEY = tl.constexpr(-0x7F800000 - 1)  # order key of -inf
_ZERO_WEIGHT_BELOW = tl.constexpr(ZERO_WEIGHT_BELOW)
_GOLDEN = tl.constexpr(GOLDEN)
_MIX1 = tl.constexpr(MIX1)
_MIX2 = tl.constexpr(MIX2)
_NOISE_SHIFT = tl.constexpr(64 - NOISE_BITS)  # the top NOISE_BITS bits of the hash
_NOISE_SCALE = tl.constexpr(1.0 / (1 << NOISE_BITS))  # exact in fp32

# Row stages (int state column _STAGE).
_TOP_K = tl.constexpr(0)  # searching the top-k prefix by counts
_TOP_P = tl.constexpr(1)  # searching the top-p prefix by masses, inside the top-k prefix
_MASS = tl.constexpr(2)  # one pass: the count and mass above min-p's key (temperature, min-p only)
_DONE = tl.constexpr(3)  # kept prefix and lse known

# Per-row state: int64 columns ...
_STAGE = tl.constexpr(0)
_LO = tl.constexpr(1)  # bracket: the boundary key v is in (lo, hi]
_HI = tl.constexpr(2)
_COUNT_HI = tl.constexpr(3)  # tokens above hi
_PROBE = tl.constexpr(4)  # min-p's key (largest key it removes), evaluated in top-p's first pass
_TOP_P_FLOOR = tl.constexpr(5)  # top-p never cuts at or below this key (tokens there weigh 0)
_KEEP_KEY = tl.constexpr(6)  # the kept prefix so far (kernels/sampling.py Prefix)
_KEEP_TIES = tl.constexpr(7)
_KEEP_GROUP = tl.constexpr(8)
_KEEP_COUNT = tl.constexpr(9)
NUM_INT = 10
_NUM_INT = tl.constexpr(NUM_INT)
# ... and fp64 columns.
_ZMAX = tl.constexpr(0)
_MASS_HI = tl.constexpr(1)  # weight of the tokens above hi
_NORM = tl.constexpr(2)  # top-p's total: the top-k prefix's mass (-1: not measured yet)
_KEEP_MASS = tl.constexpr(3)
_LSE = tl.constexpr(4)  # fp32 value: lse of the kept tokens
_TOP_P_HINT = tl.constexpr(5)  # kernels/sampling.py top_p_hint: where top-p's spaced thresholds start
NUM_FLOAT = 6
_NUM_FLOAT = tl.constexpr(NUM_FLOAT)


@triton.jit
def _order_key(z):
    """int32 keys ordered as the fp32 values are; -0.0 and +0.0 share key 0."""
    bits = z.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(z == 0.0, 0, key)


@triton.jit
def _key_value(key):
    """fp32 value of an order key (int64 in int32's range)."""
    key = key.to(tl.int32)
    return tl.where(key < 0, key ^ 0x7FFFFFFF, key).to(tl.float32, bitcast=True)


@triton.jit
def _scaled(x, temperature):
    """x / temperature rounded as torch's (Triton's `/` is approximate on fp32); x / 1 is x."""
    z = x
    if temperature != 1.0:
        z = tl.math.div_rn(x, temperature)
    return z


@triton.jit
def _noise_bits(noise_key, cols):
    """int32 in [0, 2^23): the noise bits of tokens `cols` at a position keyed by noise_key (uint64)."""
    x = noise_key + cols.to(tl.uint64) * _GOLDEN  # wraps modulo 2^64, as the int64 reference
    x = (x ^ (x >> 30)) * _MIX1
    x = (x ^ (x >> 27)) * _MIX2
    x = x ^ (x >> 31)
    return (x >> _NOISE_SHIFT).to(tl.int32)


@triton.jit
def _gumbel(bits):
    """fp32 Gumbel(0, 1) noise of noise bits: -log(-log((bits + 0.5) / 2^23)), as the reference."""
    uniform = (bits.to(tl.float32) + 0.5) * _NOISE_SCALE
    return -tl.log(-tl.log(uniform))


@triton.jit
def _thresholds(lo, hi, probe, with_probe, hint):
    """The 16 keys of a pass (kernels/sampling.py `thresholds`), int64: lo (and the probe), 8 even
    parts of the keys, the rest evenly spaced in value from max(lo's value, hint) to hi's."""
    j = tl.arange(0, _THRESHOLDS).to(tl.int64)
    shift = with_probe.to(tl.int64)
    part = j - shift  # j = 1 is the probe when there is one
    even = lo + tl.maximum(part, 0) * (hi - lo) // _EVEN_KEYS
    low_value = _key_value(lo).to(tl.float64)
    low = tl.maximum(tl.where(tl.abs(low_value) < float("inf"), low_value, -_FLOAT32_MAX), hint)
    width = _key_value(hi).to(tl.float64) - low
    spaced = (part - (_EVEN_KEYS - 1)).to(tl.float64)  # 1, 2, ... after the even keys
    parts = (-shift + (_THRESHOLDS + 1 - _EVEN_KEYS)).to(tl.float64)  # the spaced ones cut this many
    value = (low + width * spaced / parts).to(tl.float32)
    key = _order_key(value).to(tl.int64)
    usable = tl.where(tl.abs(width) < float("inf"), (key > lo) & (key < hi), False)  # NaN: false
    keys = tl.where(part < _EVEN_KEYS, even, tl.where(usable, key, lo))
    return tl.where(with_probe & (j == 1), probe, keys)


@triton.jit
def _min_p_floor(zmax, zkey, min_p):
    """Largest key that min-p removes (exp(value - zmax) < min_p, fp64); KEY_FLOOR when off."""
    lo = tl.full((), _NEG_INF_KEY, tl.int64)
    hi = zkey
    for _ in range(32):
        mid = lo + (hi - lo) // 2
        fails = tl.exp(_key_value(mid).to(tl.float64) - zmax) < min_p
        lo = tl.where(fails, mid, lo)
        hi = tl.where(fails, hi, mid)
    return tl.where(min_p > 0.0, lo, _KEY_FLOOR)


@triton.jit
def _top_p_floor(zmax):
    """Key of the largest fp32 value <= zmax - 746: every token at or below it weighs exactly 0."""
    limit = zmax - _ZERO_WEIGHT_BELOW
    value = limit.to(tl.float32)
    return _order_key(value).to(tl.int64) - (value.to(tl.float64) > limit).to(tl.int64)


@triton.jit
def _init_kernel(
    logits_ptr, row_stride, vocab,
    argmax_ptr, raw_lse_ptr, temperature_ptr, top_k_ptr, top_p_ptr, min_p_ptr,
    istate_ptr, fstate_ptr, thresholds_ptr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    temperature = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    has_k = top_k > 0
    top_p = tl.load(top_p_ptr + row)
    has_p = top_p < 1.0
    min_p = tl.load(min_p_ptr + row).to(tl.float64)
    # max(x / t) = x_max / t: rounding is monotone.
    zmax32 = _scaled(tl.load(logits_ptr + row * row_stride + tl.load(argmax_ptr + row)), temperature)
    zmax = zmax32.to(tl.float64)
    zkey = _order_key(zmax32).to(tl.int64)
    min_p_key = _min_p_floor(zmax, zkey, min_p)
    processed = has_k | has_p | (min_p > 0.0) | (temperature != 1.0)
    stage = tl.where(has_k, _TOP_K, tl.where(has_p, _TOP_P, tl.where(processed, _MASS, _DONE)))
    top_p_key = _top_p_floor(zmax)
    # top-k before top-p starts below everything: top-p's norm is the whole top-k prefix's mass.
    lo = tl.where(has_k & has_p, _KEY_FLOOR, min_p_key)
    lo = tl.where(~has_k & has_p, top_p_key, lo)
    state = istate_ptr + row * _NUM_INT
    tl.store(state + _STAGE, stage.to(tl.int64))
    tl.store(state + _LO, lo)
    tl.store(state + _HI, zkey)
    tl.store(state + _COUNT_HI, 0)
    tl.store(state + _PROBE, min_p_key)
    tl.store(state + _TOP_P_FLOOR, top_p_key)
    tl.store(state + _KEEP_KEY, _KEY_FLOOR)
    tl.store(state + _KEEP_TIES, 0)
    tl.store(state + _KEEP_GROUP, 0)
    tl.store(state + _KEEP_COUNT, vocab)
    fstate = fstate_ptr + row * _NUM_FLOAT
    tl.store(fstate + _ZMAX, zmax)
    tl.store(fstate + _MASS_HI, 0.0)
    tl.store(fstate + _NORM, -1.0)
    tl.store(fstate + _KEEP_MASS, 0.0)
    tl.store(fstate + _LSE, tl.load(raw_lse_ptr + row).to(tl.float64))  # unprocessed rows keep it
    hint = zmax + tl.log((1.0 - top_p.to(tl.float64)) / vocab) - 1.0
    tl.store(fstate + _TOP_P_HINT, hint)
    top_p_stage = stage == _TOP_P
    with_probe = top_p_stage & (lo < min_p_key) & (min_p_key < zkey)
    keys = _thresholds(lo, zkey, min_p_key, with_probe, tl.where(top_p_stage, hint, float("-inf")))
    tl.store(thresholds_ptr + row * _THRESHOLDS + tl.arange(0, _THRESHOLDS), keys)


@triton.jit
def _count_kernel(
    logits_ptr, row_stride, vocab, temperature_ptr, istate_ptr, fstate_ptr,
    thresholds_ptr,  # [rows, 16] int64: this pass's keys (_init, then _decide)
    count_ptr,  # [rows, num_chunks, 16] int32: tokens of the chunk in (lo, hi] above each threshold
    mass_ptr,  # [rows, num_chunks, 16] fp64: their weight exp(z - zmax)
    num_chunks,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    state = istate_ptr + row * _NUM_INT
    stage = tl.load(state + _STAGE)
    if stage != _DONE:
        keys = tl.load(thresholds_ptr + row * _THRESHOLDS + tl.arange(0, _THRESHOLDS)).to(tl.int32)
        lo32 = tl.load(state + _LO).to(tl.int32)
        hi32 = tl.load(state + _HI).to(tl.int32)
        zmax = tl.load(fstate_ptr + row * _NUM_FLOAT + _ZMAX)
        temperature = tl.load(temperature_ptr + row)
        # [16, BLOCK] with the tokens along the fast axis: a thread holds all 16 thresholds of its
        # tokens, so no token value moves between threads; partial sums are reduced once at the end.
        thresholds = keys[:, None]
        counts = tl.zeros([_THRESHOLDS, BLOCK], tl.int32)
        masses = tl.zeros([_THRESHOLDS, BLOCK], tl.float64)
        for start in range(0, CHUNK, BLOCK):
            cols = chunk * CHUNK + start + tl.arange(0, BLOCK)
            in_row = cols < vocab
            z = _scaled(tl.load(logits_ptr + row * row_stride + cols, mask=in_row, other=0.0), temperature)
            key = _order_key(z)
            inside = in_row & (key > lo32) & (key <= hi32)
            # Tokens above hi are already counted (count_hi), those at or below lo weigh in no
            # threshold: only the bracket's tokens do fp64 work, and later passes skip most blocks.
            if tl.max(inside.to(tl.int32), axis=0) > 0:
                weight = tl.exp(z.to(tl.float64) - zmax)
                above = inside[None, :] & (key[None, :] > thresholds)
                counts += above.to(tl.int32)
                masses += tl.where(above, weight[None, :], 0.0)
        out = (row * num_chunks + chunk) * _THRESHOLDS + tl.arange(0, _THRESHOLDS)
        tl.store(count_ptr + out, tl.sum(counts, axis=1))
        tl.store(mass_ptr + out, tl.sum(masses, axis=1))


@triton.jit
def _top_p_ties(mass_above, weight, group, limit):
    """How many of `group` tied tokens, each weighing `weight`, stay: the j-th iff mass_above +
    j x weight < limit (true at j = 0). ceil of the quotient, then one exact check each way."""
    quotient = (limit - mass_above) / weight  # +inf when the ties weigh 0
    ties = tl.maximum(tl.minimum(tl.math.ceil(quotient), group.to(tl.float64)), 1.0).to(tl.int64)
    ties = tl.where((ties < group) & (mass_above + ties.to(tl.float64) * weight < limit), ties + 1, ties)
    return tl.where((ties > 1) & (mass_above + (ties - 1).to(tl.float64) * weight >= limit), ties - 1, ties)


@triton.jit
def _decide_kernel(
    istate_ptr, fstate_ptr, thresholds_ptr, top_k_ptr, top_p_ptr, count_ptr, mass_ptr,
    tie_before_ptr,  # [rows, num_chunks] int32: tied tokens (at the boundary key) in earlier chunks
    num_chunks,
    CHUNKS: tl.constexpr,  # num_chunks rounded up to a power of two
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    state = istate_ptr + row * _NUM_INT
    fstate = fstate_ptr + row * _NUM_FLOAT
    stage = tl.load(state + _STAGE)
    if stage != _DONE:
        lo = tl.load(state + _LO)
        hi = tl.load(state + _HI)
        probe = tl.load(state + _PROBE)
        count_hi = tl.load(state + _COUNT_HI)
        mass_hi = tl.load(fstate + _MASS_HI)
        zmax = tl.load(fstate + _ZMAX)
        top_k = tl.load(top_k_ptr + row)
        top_p = tl.load(top_p_ptr + row).to(tl.float64)
        with_probe = (stage == _TOP_P) & (lo < probe) & (probe < hi)
        j = tl.arange(0, _THRESHOLDS)
        keys = tl.load(thresholds_ptr + row * _THRESHOLDS + j)
        chunk = tl.arange(0, CHUNKS)
        part = (row * num_chunks + chunk[:, None]) * _THRESHOLDS + j[None, :]
        valid = chunk[:, None] < num_chunks
        chunk_counts = tl.load(count_ptr + part, mask=valid, other=0)
        counts = count_hi + tl.sum(chunk_counts, axis=0).to(tl.int64)
        masses = mass_hi + tl.sum(tl.load(mass_ptr + part, mask=valid, other=0.0), axis=0)
        norm = tl.load(fstate + _NORM)
        # top-p alone: its first pass starts at the top-p floor, above which lies all the weight.
        norm = tl.where(norm < 0.0, tl.max(tl.where(j == 0, masses, -1.0), axis=0), norm)
        limit = top_p * norm
        kept = tl.where(stage == _TOP_K, counts < top_k, masses < limit)

        # Settled at once: the mass stage; or this filter keeps all that min-p keeps (at lo, or at
        # the probe), so min-p's prefix is the tighter one.
        at_lo = tl.max(tl.where(j == 0, kept.to(tl.int32), 0), axis=0) > 0
        at_probe = with_probe & (tl.max(tl.where(j == 1, kept.to(tl.int32), 0), axis=0) > 0)
        at_once = (stage == _MASS) | at_lo | at_probe
        pick = tl.where(at_probe, 1, 0)
        once_key = tl.max(tl.where(j == pick, keys, _KEY_FLOOR - 1), axis=0)
        once_count = tl.max(tl.where(j == pick, counts, -1), axis=0)
        once_mass = tl.max(tl.where(j == pick, masses, -1.0), axis=0)

        # The new bracket: the highest threshold the filter does not keep, the lowest it keeps.
        new_lo = tl.max(tl.where(kept, _KEY_FLOOR - 1, keys), axis=0)
        is_lo = ~kept & (keys == new_lo)  # equal thresholds have equal counts and masses
        count_lo = tl.max(tl.where(is_lo, counts, -1), axis=0)
        mass_lo = tl.max(tl.where(is_lo, masses, -1.0), axis=0)
        any_kept = tl.max(kept.to(tl.int32), axis=0) > 0
        new_hi = tl.where(any_kept, tl.min(tl.where(kept, keys, hi), axis=0), hi)
        is_hi = kept & (keys == new_hi)
        count_hi = tl.where(any_kept, tl.max(tl.where(is_hi, counts, -1), axis=0), count_hi)
        mass_hi = tl.where(any_kept, tl.max(tl.where(is_hi, masses, -1.0), axis=0), mass_hi)

        # One key left (v = new_hi, its tokens tied), or one token left (the last one kept).
        exact = new_hi - new_lo == 1
        single = count_lo - count_hi == 1
        group = count_lo - count_hi
        weight = tl.exp(_key_value(new_hi).to(tl.float64) - zmax)
        ties = tl.where(stage == _TOP_K, top_k - count_hi, _top_p_ties(mass_hi, weight, group, limit))
        ties = tl.minimum(tl.maximum(ties, 1), group)
        found_key = tl.where(at_once, once_key, tl.where(exact, new_hi, new_lo))
        found_ties = tl.where(exact & ~at_once, ties, 0)
        found_group = tl.where(exact & ~at_once, group, 0)
        found_count = tl.where(at_once, once_count, tl.where(exact, count_hi + ties, count_lo))
        exact_mass = mass_hi + ties.to(tl.float64) * weight
        found_mass = tl.where(at_once, once_mass, tl.where(exact, exact_mass, mass_lo))
        settled = at_once | exact | single

        if settled & exact & ~at_once & (ties < group):
            # The boundary's ties are split: how many lie in earlier chunks, for _draw's ranks.
            chunk_lo = tl.max(tl.where(is_lo[None, :], chunk_counts, -1), axis=1)
            chunk_hi = tl.max(tl.where(is_hi[None, :], chunk_counts, -1), axis=1)
            tied = chunk_lo - tl.where(any_kept, chunk_hi, 0)
            tl.store(tie_before_ptr + row * num_chunks + chunk, tl.cumsum(tied, axis=0) - tied,
                     mask=chunk < num_chunks)  # fmt: skip

        # The next pass: the new bracket; or, settled, top-p's inside the top-k prefix (below that
        # prefix, or at the top-p floor, up to zmax's key), or nothing.
        then_top_p = settled & (stage == _TOP_K) & (tl.load(top_p_ptr + row) < 1.0)
        next_top_p = tl.where(settled, then_top_p, stage == _TOP_P)
        next_lo = tl.where(settled, tl.maximum(new_lo, tl.load(state + _TOP_P_FLOOR)), new_lo)
        next_hi = tl.where(settled, _order_key(zmax.to(tl.float32)).to(tl.int64), new_hi)
        hint = tl.where(next_top_p, tl.load(fstate + _TOP_P_HINT), float("-inf"))
        next_probe = next_top_p & (next_lo < probe) & (probe < next_hi)
        next_keys = _thresholds(next_lo, next_hi, probe, next_probe, hint)
        tl.store(thresholds_ptr + row * _THRESHOLDS + j, next_keys)

        if settled:
            # The kept prefix so far and this filter's: the shorter one (Prefix.tighter).
            keep_key = tl.load(state + _KEEP_KEY)
            keep_ties = tl.load(state + _KEEP_TIES)
            ours = (found_key > keep_key) | ((found_key == keep_key) & (found_ties <= keep_ties))
            keep_key = tl.where(ours, found_key, keep_key)
            keep_ties = tl.where(ours, found_ties, keep_ties)
            keep_group = tl.where(ours, found_group, tl.load(state + _KEEP_GROUP))
            keep_count = tl.where(ours, found_count, tl.load(state + _KEEP_COUNT))
            keep_mass = tl.where(ours, found_mass, tl.load(fstate + _KEEP_MASS))
            tl.store(state + _KEEP_KEY, keep_key)
            tl.store(state + _KEEP_TIES, keep_ties)
            tl.store(state + _KEEP_GROUP, keep_group)
            tl.store(state + _KEEP_COUNT, keep_count)
            tl.store(fstate + _KEEP_MASS, keep_mass)
            # top-p next: inside the top-k prefix, whose mass is its norm.
            tl.store(state + _STAGE, tl.where(then_top_p, _TOP_P, _DONE).to(tl.int64))
            tl.store(state + _LO, next_lo)
            tl.store(state + _HI, next_hi)
            tl.store(state + _COUNT_HI, 0)
            tl.store(fstate + _MASS_HI, 0.0)
            tl.store(fstate + _NORM, found_mass)
            lse = (zmax + tl.log(keep_mass)).to(tl.float32).to(tl.float64)
            tl.store(fstate + _LSE, tl.where(then_top_p, 0.0, lse))
        else:
            tl.store(state + _LO, next_lo)
            tl.store(state + _HI, next_hi)
            tl.store(state + _COUNT_HI, count_hi)
            tl.store(fstate + _MASS_HI, mass_hi)
            tl.store(fstate + _NORM, norm)


@triton.jit
def _draw_kernel(
    logits_ptr, row_stride, vocab, temperature_ptr, noise_key_ptr, greedy_ptr, istate_ptr, fstate_ptr,
    tie_before_ptr,
    best_ptr,  # [rows, num_chunks] fp32: the chunk's best (z - lse) + noise among kept tokens
    best_index_ptr,  # [rows, num_chunks] int32: its first index (vocab when none is kept)
    num_chunks,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if tl.load(greedy_ptr + row) == 0:
        state = istate_ptr + row * _NUM_INT
        keep_key = tl.load(state + _KEEP_KEY).to(tl.int32)
        keep_ties = tl.load(state + _KEEP_TIES).to(tl.int32)
        split = (keep_ties > 0) & (keep_ties < tl.load(state + _KEEP_GROUP))
        lse = tl.load(fstate_ptr + row * _NUM_FLOAT + _LSE).to(tl.float32)
        temperature = tl.load(temperature_ptr + row)
        noise_key = tl.load(noise_key_ptr + row).to(tl.uint64, bitcast=True)
        seen = tl.where(split, tl.load(tie_before_ptr + row * num_chunks + chunk), 0)
        best = tl.full((), float("-inf"), tl.float32)
        best_index = vocab
        for start in range(0, CHUNK, BLOCK):
            cols = chunk * CHUNK + start + tl.arange(0, BLOCK)
            in_row = cols < vocab
            z = _scaled(tl.load(logits_ptr + row * row_stride + cols, mask=in_row, other=0.0), temperature)
            key = _order_key(z)
            tied = in_row & (key == keep_key)
            rank = tl.zeros([BLOCK], tl.int32)
            if split:  # a tied token's rank among the tied ones, by id
                tied32 = tied.to(tl.int32)
                rank = seen + tl.cumsum(tied32, axis=0) - tied32
                seen += tl.sum(tied32, axis=0)
            kept = in_row & ((key > keep_key) | (tied & (rank < keep_ties)))
            # The sorted path's score, rounded the same way: (processed logprob) + noise.
            score = tl.where(kept, (z - lse) + _gumbel(_noise_bits(noise_key, cols)), float("-inf"))
            top = tl.max(score, axis=0)
            first = tl.min(tl.where(score == top, cols, vocab), axis=0)
            better = top > best  # strictly: an equal score later in the row loses
            best_index = tl.where(better, first, best_index)
            best = tl.where(better, top, best)
        tl.store(best_ptr + row * num_chunks + chunk, best)
        tl.store(best_index_ptr + row * num_chunks + chunk, best_index)


@triton.jit
def _finish_kernel(
    logits_ptr, row_stride, vocab, temperature_ptr, argmax_ptr, greedy_ptr, istate_ptr, fstate_ptr,
    best_ptr, best_index_ptr,
    token_ptr, logprob_ptr, support_ptr,  # [rows] int64, fp32, int64
    num_chunks,
    CHUNKS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.arange(0, CHUNKS)
    valid = chunk < num_chunks
    best = tl.load(best_ptr + row * num_chunks + chunk, mask=valid, other=float("-inf"))
    index = tl.load(best_index_ptr + row * num_chunks + chunk, mask=valid, other=vocab)
    # Chunks are in vocabulary order: the first chunk holding the best holds its first index.
    drawn = tl.min(tl.where(valid & (best == tl.max(best, axis=0)), index, vocab), axis=0).to(tl.int64)
    token = tl.where(tl.load(greedy_ptr + row) != 0, tl.load(argmax_ptr + row), drawn)
    inside = tl.minimum(tl.maximum(token, 0), vocab - 1)  # a non-finite row's token may be `vocab`
    z = _scaled(tl.load(logits_ptr + row * row_stride + inside), tl.load(temperature_ptr + row))
    lse = tl.load(fstate_ptr + row * _NUM_FLOAT + _LSE).to(tl.float32)
    tl.store(token_ptr + row, token)
    tl.store(logprob_ptr + row, z - lse)
    tl.store(support_ptr + row, tl.load(istate_ptr + row * _NUM_INT + _KEEP_COUNT))


def _row_tensors(rows: SampleRows, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-row parameters on the device in two copies, without a host wait: int64 [3, R] (top_k,
    noise key, greedy) and fp32 [3, R] (temperature, top_p, min_p)."""
    num_rows = len(rows.temperatures)
    ints = torch.tensor(
        [[rows.top_k(i, vocab) for i in range(num_rows)], rows.noise_keys, [int(g) for g in rows.greedy]],
        dtype=torch.int64,
    )
    floats = torch.tensor([rows.temperatures, rows.top_ps, rows.min_ps], dtype=torch.float32)
    if device.type == "cuda":
        ints, floats = (t.pin_memory().to(device, non_blocking=True) for t in (ints, floats))
    return ints, floats


def sample_rows_triton(
    logits: torch.Tensor,  # [rows, vocab] fp32 raw logits (rows may be strided)
    greedy: torch.Tensor,  # [rows] int64: argmax of the raw logits (softmax_stats)
    raw_lse: torch.Tensor,  # [rows] fp32: logsumexp of the raw logits (softmax_stats)
    rows: SampleRows,
    *,
    chunk: int = CHUNK,  # smaller in the interpreter's tests: several chunks on small rows
    block: int | None = None,  # default: BLOCK for _draw, COUNT_BLOCK for _count
) -> SampledRows:
    """Each row's token, processed logprob and support size (kernels/sampling.py sample_rows_torch)."""
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be [rows, vocab] fp32, got {tuple(logits.shape)} {logits.dtype}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    num_rows, vocab = logits.shape
    device = logits.device
    token_ids = torch.empty(num_rows, dtype=torch.int64, device=device)
    logprobs = torch.empty(num_rows, dtype=torch.float32, device=device)
    support = torch.empty(num_rows, dtype=torch.int64, device=device)
    if num_rows == 0:
        return SampledRows(token_ids, logprobs, support)
    ints, floats = _row_tensors(rows, vocab, device)
    top_k, noise_keys, greedy_rows = ints
    temperature, top_p, min_p = floats
    num_chunks = triton.cdiv(vocab, chunk)
    chunks_pow2 = triton.next_power_of_2(num_chunks)
    istate = torch.empty(num_rows, NUM_INT, dtype=torch.int64, device=device)
    fstate = torch.empty(num_rows, NUM_FLOAT, dtype=torch.float64, device=device)
    keys = torch.empty(num_rows, THRESHOLDS, dtype=torch.int64, device=device)  # each pass's thresholds
    row_args = (logits, logits.stride(0), vocab)
    _init_kernel[(num_rows,)](
        *row_args, greedy, raw_lse, temperature, top_k, top_p, min_p, istate, fstate, keys, num_warps=1
    )
    passes = rows.search_passes(vocab)
    tie_before = torch.empty(num_rows, num_chunks, dtype=torch.int32, device=device)
    if passes:
        counts = torch.empty(num_rows, num_chunks, THRESHOLDS, dtype=torch.int32, device=device)
        masses = torch.empty(num_rows, num_chunks, THRESHOLDS, dtype=torch.float64, device=device)
        for _ in range(passes):
            _count_kernel[(num_rows, num_chunks)](
                *row_args, temperature, istate, fstate, keys, counts, masses, num_chunks,
                CHUNK=chunk, BLOCK=block or COUNT_BLOCK, num_warps=COUNT_WARPS,
            )  # fmt: skip
            # No FMA contraction: mass + ties x weight rounds twice, as in the reference.
            _decide_kernel[(num_rows,)](
                istate, fstate, keys, top_k, top_p, counts, masses, tie_before, num_chunks,
                CHUNKS=chunks_pow2, num_warps=1, enable_fp_fusion=False,
            )  # fmt: skip
    best = torch.empty(num_rows, num_chunks, dtype=torch.float32, device=device)
    best_index = torch.empty(num_rows, num_chunks, dtype=torch.int32, device=device)
    if not all(rows.greedy):
        _draw_kernel[(num_rows, num_chunks)](
            *row_args, temperature, noise_keys, greedy_rows, istate, fstate, tie_before, best, best_index,
            num_chunks, CHUNK=chunk, BLOCK=block or BLOCK, num_warps=8,
        )  # fmt: skip
    _finish_kernel[(num_rows,)](
        *row_args, temperature, greedy, greedy_rows, istate, fstate, best, best_index,
        token_ids, logprobs, support, num_chunks, CHUNKS=chunks_pow2, num_warps=1,
    )  # fmt: skip
    return SampledRows(token_ids, logprobs, support)


@triton.jit
def _noise_kernel(noise_key_ptr, bits_ptr, gumbel_ptr, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    bits = _noise_bits(tl.load(noise_key_ptr + row).to(tl.uint64, bitcast=True), cols)
    tl.store(bits_ptr + row * vocab + cols, bits, mask=cols < vocab)
    tl.store(gumbel_ptr + row * vocab + cols, _gumbel(bits), mask=cols < vocab)


def noise_triton(noise_keys: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise _draw_kernel adds, as tables (for tests): ([rows, vocab] int32 bits, fp32 Gumbel)."""
    rows = noise_keys.shape[0]
    bits = torch.empty(rows, vocab, dtype=torch.int32, device=noise_keys.device)
    gumbel = torch.empty(rows, vocab, dtype=torch.float32, device=noise_keys.device)
    if bits.numel():
        _noise_kernel[(rows, triton.cdiv(vocab, BLOCK))](noise_keys, bits, gumbel, vocab, BLOCK=BLOCK)
    return bits, gumbel
