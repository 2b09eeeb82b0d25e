"""Padding waste: the share of computed token positions that are padding, per stage.

  CLO training batches     CLOTrainer's own DataLoader over one epoch with the kit's defaults (seeds of similar
                           length grouped, clo_utils.batching; on CPU each padded batch forwarded in chunks of
                           rows of similar length, CLOConfig.forward_chunk_padding; packed into one row where
                           the model allows it and CLOConfig.padding_free asks for it), and the same batches in
                           one forward each, packed, and padded with the Trainer's random sampler;
  TRL SFT and DPO batches  the baselines as train_sft / train_dpo build them (pre-tokenised rows), with
                           train_sampling_strategy="group_by_length" (the kit's default) and "random";
  the reference pass       CLOTrainer._reference_pass's batches (single sequences sorted by length, forwarded in
                           chunks like the training batches);
  generation               clo_utils.evaluation.evaluate.generate_answers, its positions counted by
                           clo_utils.evaluation.decoding.DecodeStats: the left padding of each prefill chunk, and
                           (with transformers' generate) the positions a row still computes after its EOS while
                           others in its batch go on. A decode step computes one position per row still in the
                           batch; its attention also reads the masked columns of the joined KV cache, which cost
                           no matmul over the model's weights and are not counted as positions.

A computed position is one row x one column of a padded batch (of a chunk, when a batch is forwarded in
chunks cut to their own width); a real one is a token of the data (prompt and response; in generation, the
prompt and the answer up to its EOS). A packed batch computes its real tokens only.
"""

from __future__ import annotations

from benchmarks.harness import Context, fresh_model, quiet

NAME = "padding"
TARGETS = {
    "padding_clo_training": (
        "<=",
        0.10,
        "CLO training batches (the kit's defaults): padding share of computed positions",
    ),
    "padding_clo_training_one_forward": (
        None,
        None,
        "CLO training, padded batches grouped by length, one forward per batch (forward_chunk_padding=None)",
    ),
    "padding_clo_training_packed": (
        None,
        None,
        "CLO training, a batch's sequences packed into one row (padding_free)",
    ),
    "padding_clo_training_random": (None, None, "CLO training, padded batches with the Trainer's random sampler"),
    "padding_reference_pass": ("<=", 0.10, "CLO reference pass: padding share"),
    # what grouping cannot remove from padded batches: each seed's four sequences (en and tgt sides differ)
    # share one width
    "padding_clo_seed_floor": (None, None, "CLO padded: padding if every batch held seeds of one length (intra-seed)"),
    "padding_reference_by_seed": (None, None, "reference pass with seeds, not sequences, sorted and batched"),
    "padding_sft_training": (None, None, "TRL SFT batches (grouped by length, the kit's default / random)"),
    "padding_dpo_training": (None, None, "TRL DPO batches (grouped by length, the kit's default / random)"),
    "padding_generation": ("<=", 0.15, "generation: left padding + positions after EOS"),
}


def mask_counts(batches, chunk_padding: float | None = None) -> tuple[int, int]:
    """(computed positions, real tokens) of batches carrying an attention mask, each forwarded whole or, with
    `chunk_padding`, in the chunks CLOTrainer forwards (clo_utils.batching.length_chunks, each cut to its
    own width); a batch without a mask (packed, padding-free) computes its real tokens only."""
    from clo_utils.batching import length_chunks

    computed = real = 0
    for batch in batches:
        mask = batch.get("attention_mask")
        if mask is None:
            computed += batch["input_ids"].numel()
            real += batch["input_ids"].numel()
            continue
        lengths = mask.sum(-1).tolist()
        chunks = [range(len(lengths))] if chunk_padding is None else length_chunks(lengths, chunk_padding)
        computed += sum(len(rows) * max(lengths[i] for i in rows) for rows in chunks)
        real += sum(lengths)
    return computed, real


def counts_of(lengths_per_item: list[list[int]], batches: list[list[int]]) -> tuple[int, int]:
    """(computed, real) positions when each batch pads its items' rows to its longest row."""
    computed = real = 0
    for batch in batches:
        rows = [n for i in batch for n in lengths_per_item[i]]
        computed += len(rows) * max(rows)
        real += sum(rows)
    return computed, real


def share(computed: int, real: int) -> float:
    return 1.0 - real / computed if computed else 0.0


def clo_batches(trainer, strategy: str, padded: bool = False, packed: bool = False) -> list[dict]:
    """One epoch of CLOTrainer's batches: its own collator, or padded, or packed into one row."""
    from clo_utils.train import CLOCollator

    trainer.args.train_sampling_strategy = strategy
    collator = trainer.data_collator
    if padded or packed:
        trainer.data_collator = CLOCollator(trainer.pad_token_id, padding_free=packed)
    try:
        return list(trainer.get_train_dataloader())
    finally:
        trainer.data_collator = collator


def reference_batches(trainer) -> list[dict]:
    """The batches CLOTrainer._reference_pass builds, the model not run (zeros returned)."""
    import torch

    examples = [dict(ex) for ex in trainer.train_dataset]
    seen = []

    def record(model, batch):
        seen.append(batch)
        rows = batch["input_ids"].shape[0]
        return (torch.zeros(rows), torch.ones(rows)), None

    trainer._response_logps = record
    try:
        trainer._reference_pass(examples, torch.zeros(len(examples), 4))
    finally:
        del trainer._response_logps
    return seen


def trl_batches(trainer, strategy: str) -> list[dict]:
    """One epoch of a TRL trainer's batches under `strategy`."""
    trainer.args.train_sampling_strategy = strategy
    return list(trainer.get_train_dataloader())


def run(ctx: Context) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from clo_utils.data import build_cross_lingual_pairs, build_sft_rows
    from clo_utils.evaluation.decoding import DecodeStats
    from clo_utils.evaluation.evaluate import generate_answers
    from clo_utils.train import (
        CLOConfig,
        CLOTrainer,
        _pretokenized_dpo_trainer,
        dpo_config,
        sft_config,
        tokenize_clo_pairs,
        tokenize_dpo_pairs,
        tokenize_sft_rows,
        training_profile,
    )

    args, results = ctx.args, ctx.results
    B = args.padding_batch_seeds
    seeds = ctx.seeds(args.padding_seeds)
    model, tok, _ = fresh_model(args.model, "attention")
    pairs = build_cross_lingual_pairs(seeds)
    examples, stats = tokenize_clo_pairs(pairs, tok, args.max_length)
    examples = [{**ex, "ref_logps": [0.0] * 4} for ex in examples]  # no reference pass: batches only
    common = dict(save_strategy="no", disable_tqdm=True, seed=0, report_to="none", **training_profile())
    cfg = CLOConfig(
        output_dir=str(ctx.work / "pad-clo"), per_device_train_batch_size=B, max_length=args.max_length, **common
    )
    clo = CLOTrainer(model, cfg, examples, processing_class=tok)
    chunks = clo.forward_chunk_padding  # the kit's default on this machine (training_profile)
    section = {
        "seeds": len(examples),
        "batch_seeds": B,
        "padding_free": clo.padding_free,
        "forward_chunk_padding": chunks,
    }
    figures = {"clo_training": mask_counts(clo_batches(clo, "group_by_length"), chunks)}
    for strategy in ("random", "group_by_length"):
        figures[f"clo_{strategy}"] = mask_counts(clo_batches(clo, strategy, padded=True))
    figures["clo_packed"] = mask_counts(clo_batches(clo, "group_by_length", packed=True))
    figures["reference_pass"] = mask_counts(reference_batches(clo), chunks)
    lengths = [[len(ids) for ids in ex["input_ids"]] for ex in examples]
    figures["clo_seed_floor"] = counts_of(lengths, [[i] for i in range(len(lengths))])
    by_seed = sorted(range(len(lengths)), key=lambda i: -max(lengths[i]))
    ref_seeds = clo.args.precompute_ref_batch_size
    figures["reference_by_seed"] = counts_of(
        lengths, [by_seed[k : k + ref_seeds] for k in range(0, len(by_seed), ref_seeds)]
    )

    trl_common = {k: v for k, v in common.items() if k not in training_profile()}  # sft/dpo_config add the profile
    sft_cfg = sft_config(
        str(ctx.work / "pad-sft"), max_length=args.max_length, per_device_train_batch_size=2 * B, **trl_common
    )
    with quiet():
        sft = SFTTrainer(
            model=model,
            args=sft_cfg,
            processing_class=tok,
            train_dataset=Dataset.from_list(tokenize_sft_rows(build_sft_rows(seeds, "both"), tok, args.max_length)),
        )
    dpo_cfg = dpo_config(
        str(ctx.work / "pad-dpo"),
        max_length=args.max_length,
        per_device_train_batch_size=2 * B,
        precompute_ref_log_probs=False,
        **trl_common,
    )
    with quiet():
        dpo = _pretokenized_dpo_trainer()(
            model=model,
            args=dpo_cfg,
            processing_class=tok,
            train_dataset=Dataset.from_list(tokenize_dpo_pairs(pairs, tok, args.max_length)),
        )
    for strategy in ("random", "group_by_length"):
        torch.manual_seed(0)  # transformers' samplers draw from the global generator the Trainer seeds
        figures[f"sft_{strategy}"] = mask_counts(trl_batches(sft, strategy))
        torch.manual_seed(0)
        figures[f"dpo_{strategy}"] = mask_counts(trl_batches(dpo, strategy))

    prompts = [s["prompt_tgt"] for s in seeds][: args.gen_prompts]
    generation = DecodeStats()
    generate_answers(
        model,
        tok,
        prompts,
        max_new_tokens=args.gen_tokens,
        batch_size=args.gen_batch,
        progress=False,
        stats=generation,
    )
    figures["generation"] = (generation.computed, generation.real)

    section["positions"] = {
        k: {"computed": c, "real": r, "padding_share": share(c, r)} for k, (c, r) in figures.items()
    }
    for name, (computed, real) in figures.items():
        print(f"  {name:24s} {computed:8d} positions computed, {real:8d} real, padding {share(computed, real):.1%}")
    pct = {k: share(*v) for k, v in figures.items()}
    if clo.padding_free:
        layout = f"{4 * B} sequences packed in one row (padding_free)"
    elif chunks is not None:
        layout = f"padded batches forwarded in chunks of <= {chunks:.0%} padding (forward_chunk_padding)"
    else:
        layout = "padded batches, one forward each"
    results.add(
        TARGETS,
        "padding_clo_training",
        pct["clo_training"],
        f"{len(examples)} seeds, {B} per batch, grouped by length, {layout}",
    )
    results.add(
        TARGETS,
        "padding_clo_training_one_forward",
        pct["clo_group_by_length"],
        "forward_chunk_padding=None: each seed's four sequences padded to one width (see padding_clo_seed_floor)",
    )
    results.add(
        TARGETS,
        "padding_clo_training_packed",
        pct["clo_packed"],
        "padding_free=True: one row per batch; eager/sdpa attention then scores the whole row",
    )
    results.add(
        TARGETS,
        "padding_clo_training_random",
        pct["clo_random"],
        "padding_free=False, train_sampling_strategy='random'",
    )
    results.add(
        TARGETS,
        "padding_reference_pass",
        pct["reference_pass"],
        f"{4 * ref_seeds} single sequences per batch, sorted by length"
        + (f", forwarded in chunks of <= {chunks:.0%} padding" if chunks is not None else ""),
    )
    results.add(
        TARGETS, "padding_clo_seed_floor", pct["clo_seed_floor"], "each seed padded to its own longest sequence only"
    )
    results.add(
        TARGETS,
        "padding_reference_by_seed",
        pct["reference_by_seed"],
        f"{ref_seeds} seeds per batch, sorted by their longest sequence",
    )
    results.add(
        TARGETS,
        "padding_sft_training",
        pct["sft_group_by_length"],
        f"{2 * B} rows per batch; random sampler {pct['sft_random']:.1%}",
    )
    results.add(
        TARGETS,
        "padding_dpo_training",
        pct["dpo_group_by_length"],
        f"{2 * B} pairs per batch; random sampler {pct['dpo_random']:.1%}",
    )
    results.add(
        TARGETS,
        "padding_generation",
        pct["generation"],
        f"{len(prompts)} prompts, batch {args.gen_batch}, {args.gen_tokens} new tokens at most",
    )
    results.sections["padding"] = section
