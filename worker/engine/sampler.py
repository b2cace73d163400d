"""Sampler: picks each sequence's next token and reports its processed fp32 logprob.

Processing, in the order Hugging Face `generate` applies it: temperature, top-k, top-p, min-p. The
processed logprob of a token is the log-softmax of the processed logits at that position, i.e. the
log-probability under the distribution the token was actually drawn from (docs/design.md §1). Greedy
requests (temperature 0) take the argmax and report the same processing at temperature 1.

Sampling noise is counter-based (sampling_noise.py): sequence s draws its token at output position p
with noise keyed by (request seed, sample index, p). A request therefore replays the same tokens
whatever else is in the batch, after a preemption recompute, and on CPU or GPU alike.

Two paths keep one rule. On CUDA, fused sort-free kernels (ops.sample_rows, kernels/sampling_triton.py)
find each row's kept tokens by a threshold search and draw in a few passes over the logits. The
PyTorch path here (filter_logits sorts each row) is the CPU path and the reference, and runs any batch
that asks for top logprobs (it needs the processed table).

Runtime guards: a row with non-finite logits, or a token outside the processed support or the
vocabulary, is reported as an error for that sequence alone; no token is returned for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from epochserve.kernels.sampling import SampleRows
from epochserve.sampling import SamplingParams
from epochserve.worker.engine.sampling_noise import gumbel_noise, position_keys
from epochserve.worker.engine.sequence import Sequence
from epochserve.worker.layers.ops import TORCH_OPS, TorchOps


@dataclass(slots=True)
class SamplerOutput:
    """Created by Sampler.sample, consumed by Engine. Row i belongs to the i-th sequence passed in."""

    token_ids: list[int]  # [num_seqs]
    processed_logprobs: list[float]  # [num_seqs]
    raw_logprobs: list[float | None]  # [num_seqs]; None unless requested
    top_logprobs: list[tuple[list[int], list[float]] | None]  # [num_seqs]; None unless requested
    support_sizes: list[int | None]  # [num_seqs]; tokens the processed distribution kept, if asked
    errors: list[str | None]  # [num_seqs]; a message when a runtime guard tripped


@dataclass(slots=True)
class PendingSample:
    """Sampler.launch's results, queued on the device and on their way to the host. Created by
    launch, consumed by collect (which waits for the copy alone, not for work queued after it)."""

    token_ids: torch.Tensor  # [num_seqs] int64 on the device: a run-ahead step's inputs
    host: torch.Tensor  # [5, num_seqs] float64, host: token, processed/raw logprob, finite, support size
    top: tuple[torch.Tensor, torch.Tensor] | None  # host copies of the top-k values and ids, if asked
    copied: torch.cuda.Event | None  # set once `host` and `top` hold their values (CUDA)
    params: list[SamplingParams]
    vocab: int


def _on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-row parameters on the device without a host wait: torch.tensor(..., device="cuda")
    synchronizes the stream, which would stall a step launched ahead until the one before ends."""
    host = torch.tensor(values, dtype=dtype)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host


def _to_host(values: torch.Tensor) -> torch.Tensor:
    # non_blocking: into pinned memory, ordered after the sampling kernels, without a host wait.
    return values.to("cpu", non_blocking=values.is_cuda)


def sample_rows_of(seqs: list[Sequence]) -> SampleRows:
    """What each sequence draws, for ops.sample_rows: greedy rows at temperature 1 (their logprobs),
    sampled rows with the noise key of (seed, sample, position) that the sorted path uses too."""
    params = [seq.sampling for seq in seqs]
    return SampleRows(
        temperatures=[1.0 if p.is_greedy else p.temperature for p in params],
        top_ks=[p.top_k for p in params],
        top_ps=[p.top_p for p in params],
        min_ps=[p.min_p for p in params],
        # one numpy pass for the batch; greedy rows get a key too, unused
        noise_keys=position_keys([s.noise_base for s in seqs], [s.num_generated_tokens for s in seqs]),
        greedy=[p.is_greedy for p in params],
    )


def filter_logits(
    logits: torch.Tensor,  # [num_seqs, vocab] fp32, already divided by temperature
    top_k: torch.Tensor,  # [num_seqs] int64, 0 = off
    top_p: torch.Tensor,  # [num_seqs] fp32, 1 = off
    min_p: torch.Tensor,  # [num_seqs] fp32, 0 = off
    batch_invariant: bool = False,
) -> torch.Tensor:
    """Set to -inf every token that top-k, then top-p, then min-p removes. The top token always stays.

    The boundary rule (README "What logprobs mean"; epochserve/sampling/reference.py is the trainer's
    copy): tokens ranked by logit, ties by the lower id (a stable sort); top-k keeps the first k;
    top-p keeps a token iff the mass of the tokens ranked before it is < top_p; min-p keeps a token
    iff its probability is >= min_p x the top token's. Probabilities and prefix sums are fp64: an
    fp32 sum over a 128k vocabulary is off by up to ~1e-5, so the boundary token was decided by
    rounding; fp64's error (~vocab x 2^-53, 3e-11 at 256k) cannot move a margin above 1e-9.

    batch_invariant: CUDA's cumsum picks its scan by the number of rows (tests/gpu shows a lone row
    summing differently), so the top-p prefix sums then run one row per call; on CPU the softmax's
    sum does too (threads split a lone row, not a table's), so there every row is filtered alone.
    """
    if batch_invariant and logits.shape[0] > 1 and logits.device.type == "cpu":
        rows = zip(logits.split(1), top_k.split(1), top_p.split(1), min_p.split(1), strict=True)
        return torch.cat([filter_logits(*row) for row in rows])
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab)
    remove = ranks[None, :] >= k[:, None]
    sorted64 = sorted_logits.double()
    probs = sorted64.masked_fill(remove, float("-inf")).softmax(dim=-1)
    if batch_invariant and probs.shape[0] > 1:
        cumulative = torch.cat([row.cumsum(dim=-1) for row in probs.split(1)])
    else:
        cumulative = probs.cumsum(dim=-1)
    # cumulative[:, r - 1] is the mass ranked before rank r (rank 0 always stays).
    top_p64 = top_p.double()[:, None]
    remove[:, 1:] |= (cumulative[:, :-1] >= top_p64) & (top_p64 < 1.0)
    # min-p: p_r >= min_p * p_0  <=>  exp(z_r - z_0) >= min_p (the normalisation cancels).
    remove |= (sorted64 - sorted64[:, :1]).exp() < min_p.double()[:, None]
    remove[:, 0] = False
    filtered = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, filtered)


class Sampler:
    def __init__(self, batch_invariant: bool = False, ops: TorchOps = TORCH_OPS) -> None:
        self.batch_invariant = batch_invariant
        self.ops = ops  # softmax_stats: PyTorch, or one Triton pass over each row on CUDA

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: [len(seqs), vocab] fp32 at each sequence's last position. One device sync."""
        return self.collect(self.launch(logits, seqs))

    def launch(self, logits: torch.Tensor, seqs: list[Sequence]) -> PendingSample:
        """Queue the sampling of every row and the copy of its results to the host; no host wait.
        Sampling noise is keyed by each sequence's num_generated_tokens as it is now."""
        _num_seqs, vocab = logits.shape
        # Per row: argmax, logsumexp and finiteness in one pass, never the whole log-softmax table
        # (ops.softmax_stats; a logprob is `logit - logsumexp`). A non-finite row only spoils its own
        # results, which the guard in collect discards.
        greedy, raw_lse, is_finite = self.ops.softmax_stats(logits)
        params = [seq.sampling for seq in seqs]
        max_top = max(p.num_top_logprobs for p in params)
        # On CUDA, fused sort-free kernels draw every row (ops.sample_rows); they build no processed
        # table, so a batch asking for top logprobs takes the sorted path, as does the CPU.
        rows = sample_rows_of(seqs)
        fused = None if max_top else self.ops.sample_rows(logits, greedy, raw_lse, rows)
        top = None
        if fused is not None:
            token_ids, chosen, support = fused
        else:
            sorted_path = self._sample_sorted(logits, greedy, raw_lse, seqs, rows.noise_keys, max_top)
            token_ids, chosen, support, top = sorted_path
        raw = chosen
        if any(p.return_raw_logprobs for p in params):
            raw = logits.gather(1, token_ids[:, None])[:, 0] - raw_lse
        # Everything the host needs in one transfer (counts and token ids are exact in float64).
        results = [token_ids, chosen, raw, is_finite, support]
        host = _to_host(torch.stack([row.double() for row in results]))
        copied = None
        if logits.is_cuda:
            copied = torch.cuda.Event()
            copied.record()
        return PendingSample(token_ids, host, top, copied, params, vocab)

    def _sample_sorted(
        self,
        logits: torch.Tensor,
        greedy: torch.Tensor,
        raw_lse: torch.Tensor,
        seqs: list[Sequence],
        noise_keys: list[int],
        max_top: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The PyTorch path: the processed table (filter_logits sorts each row), then the noisy argmax.
        (token ids, processed logprobs, support sizes or a placeholder, host copies of the top logprobs)."""
        params = [seq.sampling for seq in seqs]
        processed = self._process(logits, params)
        lse = raw_lse if processed is logits else self.ops.softmax_stats(processed)[1]
        token_ids = self._choose(greedy, processed, lse, seqs, noise_keys)
        chosen = processed.gather(1, token_ids[:, None])[:, 0] - lse
        support = token_ids  # a placeholder row unless a sequence asked for its support size
        if any(p.return_support_size for p in params):
            support = (processed != float("-inf")).sum(dim=-1)
        top = None
        if max_top:
            values, ids = (processed - lse[:, None]).topk(min(max_top, logits.shape[-1]), dim=-1)
            top = (_to_host(values), _to_host(ids))
        return token_ids, chosen, support, top

    def score(self, logits: torch.Tensor, params: list[SamplingParams], targets: list[int]) -> torch.Tensor:
        """Processed logprob of targets[i] in row i (return_prompt_logprobs), with the processing
        of the row's request; the same numbers the sorted path gives a sampled token. -inf where
        the processing removed the target. On the logits' device, queued."""
        processed = self._process(logits, params)
        lse = self.ops.softmax_stats(processed)[1]
        ids = _on_device(targets, torch.int64, logits.device)
        return processed.gather(1, ids[:, None])[:, 0] - lse

    def collect(self, pending: PendingSample) -> SamplerOutput:
        """The host's view of a launched sampling: waits for its copy (and nothing queued later)."""
        if pending.copied is not None:
            pending.copied.synchronize()
        params, vocab = pending.params, pending.vocab
        host = pending.host.tolist()
        wants_raw = [p.return_raw_logprobs for p in params]
        tokens = [int(t) for t in host[0]]
        top = self._top_logprobs(pending.top, params)
        errors: list[str | None] = []
        for token, logprob, ok in zip(tokens, host[1], host[3], strict=True):
            if not ok:
                errors.append("non-finite logits")
            elif not 0 <= token < vocab:
                errors.append(f"sampled token {token} outside the vocabulary")
            elif logprob == float("-inf"):
                errors.append(f"sampled token {token} outside the processed support")
            else:
                errors.append(None)
        raw_out: list[float | None] = [
            r if want else None for r, want in zip(host[2], wants_raw, strict=True)
        ]
        support: list[int | None] = [
            int(size) if p.return_support_size else None for size, p in zip(host[4], params, strict=True)
        ]
        return SamplerOutput(tokens, host[1], raw_out, top, support, errors)

    def _process(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Temperature (1 for greedy rows), then top-k, top-p, min-p; logits pass through untouched
        when no row changes them."""
        device = logits.device
        processed = logits
        if any(p.temperature not in (0.0, 1.0) for p in params):
            temperatures = [1.0 if p.is_greedy else p.temperature for p in params]
            temperature = _on_device(temperatures, torch.float32, device)
            processed = logits / temperature[:, None]
        if any(p.has_filters for p in params):
            processed = filter_logits(
                processed,
                _on_device([p.top_k for p in params], torch.int64, device),
                _on_device([p.top_p for p in params], torch.float32, device),
                _on_device([p.min_p for p in params], torch.float32, device),
                self.batch_invariant,
            )
        return processed

    @staticmethod
    def _top_logprobs(
        top_k: tuple[torch.Tensor, torch.Tensor] | None, params: list[SamplingParams]
    ) -> list[tuple[list[int], list[float]] | None]:
        top: list[tuple[list[int], list[float]] | None] = [None] * len(params)
        if top_k is not None:
            values_list, ids_list = top_k[0].tolist(), top_k[1].tolist()
            for i, p in enumerate(params):
                if p.num_top_logprobs:
                    top[i] = (ids_list[i][: p.num_top_logprobs], values_list[i][: p.num_top_logprobs])
        return top

    @staticmethod
    def _choose(
        greedy: torch.Tensor,
        processed: torch.Tensor,
        lse: torch.Tensor,
        seqs: list[Sequence],
        noise_keys: list[int],
    ) -> torch.Tensor:
        """Greedy rows: the argmax of the logits (`greedy`). Sampled rows: argmax of processed logprob
        + Gumbel noise keyed by (seed, sample, position) (noise_keys, one per row) — a draw from
        exactly the processed distribution."""
        sampled_rows = [i for i, s in enumerate(seqs) if not s.sampling.is_greedy]
        if not sampled_rows:
            return greedy
        rows = _on_device(sampled_rows, torch.int64, processed.device)
        keys_on_device = _on_device([noise_keys[i] for i in sampled_rows], torch.int64, processed.device)
        logprobs = processed.index_select(0, rows) - lse.index_select(0, rows)[:, None]
        noisy = logprobs + gumbel_noise(keys_on_device, processed.shape[-1])
        return greedy.index_copy(0, rows, noisy.argmax(dim=-1))
