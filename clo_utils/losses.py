"""The CLO objective as pure tensor functions (fp32 arithmetic whatever the model dtype).

    r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))                      # DPO implicit reward
    L_CL    = mean_triples -log sigmoid(r(x, chosen) - r(x, rejected))   # Rafailov et al. 2023, eq. 7
    L_CLO   = lam * L_NLL + (1 - lam) * L_CL                              # Lee et al. 2025 (CLO)

L_NLL is the token-mean NLL of the target-language chosen responses only: the paper's
ablation found that adding English NLL brings the English bias back (`nll_on="both"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NLL_ON = ("target", "both")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Summed log-probabilities of the label tokens of each sequence, and their count.

    `labels` is aligned with the inputs (HF convention: position t's logits predict token t+1);
    positions equal to `ignore_index` (prompt, padding) are masked. Returns two (B,) tensors:
    the fp32 sum of log pi(token) over response tokens, and the number of those tokens.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (batch, length)")
    labels = labels[:, 1:]
    mask = labels != ignore_index
    safe_labels = labels.masked_fill(~mask, 0)
    sums = []
    for row_logits, row_labels, row_mask in zip(logits[:, :-1], safe_labels, mask):
        # One row at a time: a (T, V) fp32 copy instead of (B, T, V) for large vocabularies.
        row_logits = row_logits.float()
        token_logps = row_logits.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1) - row_logits.logsumexp(-1)
        sums.append((token_logps * row_mask).sum())
    return torch.stack(sums), mask.sum(-1)


def response_positions(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(B, T) bool mask of the positions whose logits predict a label token (position t predicts t+1).

    Passed to a transformers causal LM as `logits_to_keep`, it makes the LM head run on response
    positions only (the kept hidden states come back flattened to (N, V) logits), so the prompt and
    the padding never get a vocabulary-sized row: in a CLO batch of 16 sequences that row is the
    largest activation (49k x 4 bytes per token for SmolLM2, 262k for Gemma-3).
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != ignore_index
    return keep


def packed_sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    chunk_tokens: int = 2048,
    segments: torch.Tensor | None = None,
    n_sequences: int | None = None,
):
    """`sequence_logps` for logits computed at the `keep` positions only.

    `logits` is (N, V) with N = keep.sum(), in row-major order of `keep` (what `hidden[keep]` gives);
    `keep` is `response_positions(labels)`. Returns the same two (B,) tensors as `sequence_logps`.
    The fp32 log-softmax runs over chunks of `chunk_tokens` rows (one fp32 copy at a time for bf16).

    Padding-free batches hold several sequences in one row: `segments` (shaped like `labels`) says
    which of the `n_sequences` sequences each position belongs to, and the sums and counts are per
    sequence instead of per row. Each sequence's first label must be -100 (a prompt token), so no
    position predicts across a boundary.
    """
    n_kept = int(keep.sum())
    if logits.ndim != 2 or logits.shape[0] != n_kept:
        raise ValueError(f"logits {tuple(logits.shape)} should be (N, V) with N = {n_kept}, the kept positions")
    if keep[:, -1].any():
        raise ValueError("keep marks the last position, which predicts no token: build it with response_positions")
    targets = labels[:, 1:][keep[:, :-1]]
    token_logps = []
    for chunk, chunk_targets in zip(logits.split(chunk_tokens), targets.split(chunk_tokens)):
        chunk = chunk.float()
        token_logps.append(chunk.gather(-1, chunk_targets.unsqueeze(-1)).squeeze(-1) - chunk.logsumexp(-1))
    token_logps = torch.cat(token_logps) if token_logps else logits.new_zeros(0, dtype=torch.float32)
    if segments is None:
        rows, n_rows, counts = keep.nonzero(as_tuple=True)[0], labels.shape[0], keep.sum(-1)
    else:
        if segments.shape != labels.shape or n_sequences is None:
            raise ValueError(
                f"segments {tuple(segments.shape)} should be shaped like labels {tuple(labels.shape)}, "
                "with n_sequences given"
            )
        rows, n_rows = segments[keep], n_sequences
        counts = torch.bincount(rows, minlength=n_rows)
    sums = torch.zeros(n_rows, dtype=torch.float32, device=logits.device).index_add(0, rows, token_logps)
    return sums, counts


def response_nll(
    chosen_logps: torch.Tensor, chosen_counts: torch.Tensor, is_target: torch.Tensor, nll_on: str = "target"
) -> torch.Tensor:
    """Token-mean NLL over the chosen responses of the batch's target-direction triples
    (`nll_on="target"`, the paper's default) or of every triple (`"both"`, the ablation)."""
    if nll_on not in NLL_ON:
        raise ValueError(f"nll_on must be one of {NLL_ON}, got {nll_on!r}")
    keep = is_target.bool() if nll_on == "target" else torch.ones_like(is_target, dtype=torch.bool)
    if not keep.any():
        raise ValueError("no target-language triple in the batch: the NLL term is undefined")
    return -chosen_logps.float()[keep].sum() / chosen_counts[keep].sum().clamp(min=1).float()


def clo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    target_nll: torch.Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
    directions: list[str] | None = None,
):
    """CLO loss over all triples of a batch: lam * target_nll + (1 - lam) * mean(-logsigmoid(margin)).

    The first four arguments are (B,) summed response log-probs; `directions` (optional, one of
    "en"/"tgt" per triple) adds per-direction reward metrics. Returns (loss, metrics) where
    metrics are detached scalars named like TRL's DPO logs.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (the DPO temperature), got {beta}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1] (weight of the target NLL), got {lam}")
    chosen_rewards = beta * (policy_chosen_logps.float() - ref_chosen_logps.float())
    rejected_rewards = beta * (policy_rejected_logps.float() - ref_rejected_logps.float())
    margins = chosen_rewards - rejected_rewards
    cl_loss = -F.logsigmoid(margins).mean()
    loss = lam * target_nll.float() + (1.0 - lam) * cl_loss

    metrics = {"cl_loss": cl_loss.detach(), "nll_loss": target_nll.detach().float()}
    groups = {"": torch.ones_like(margins, dtype=torch.bool)}
    if directions is not None:
        for d in ("en", "tgt"):
            groups[f"_{d}"] = torch.tensor([x == d for x in directions], device=margins.device)
    for suffix, m in groups.items():
        if m.any():
            metrics[f"rewards{suffix}/chosen"] = chosen_rewards[m].mean().detach()
            metrics[f"rewards{suffix}/rejected"] = rejected_rewards[m].mean().detach()
            metrics[f"rewards{suffix}/margins"] = margins[m].mean().detach()
            metrics[f"rewards{suffix}/accuracies"] = (margins[m] > 0).float().mean().detach()
    return loss, metrics
