"""CLO training on the Hugging Face Trainer stack, and the TRL baselines (SFT, SFT+DPO).

Why a `transformers.Trainer` subclass rather than a TRL `DPOTrainer` subclass: CLO's unit is the
*seed* (two triples, four sequences, one batch), its loss adds a target-only NLL term that TRL
removed (`rpo_alpha` is gone since TRL 0.29), and its reference log-probs are cached on disk
across runs. DPOTrainer's tokenisation, collator and loss dispatch would all need overriding.
The Trainer base still gives accelerate/DeepSpeed/FSDP, checkpoints, resume, `report_to` and
logging. The sequence convention is TRL's (prompt via the chat template with the generation
prompt, completion = the rest of the rendered conversation), so CLO with lam = 0 equals
DPOTrainer's sigmoid loss on the same data (tests/test_train.py checks it).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import resource
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .cache import DiskCache, cache_key, default_cache_dir
from .losses import NLL_ON, clo_loss, packed_sequence_logps, response_nll, response_positions, sequence_logps

log = logging.getLogger(__name__)

# Order of the four sequences of one seed inside a batch.
SEQUENCE_ORDER = ("en_chosen", "en_rejected", "tgt_chosen", "tgt_rejected")
REFERENCE_CACHE_VERSION = "clo-ref-v3"  # in every reference cache key: a changed computation never reuses old values
# Where packed batches are proven equal to padded ones (tests/test_train.py, tiny models of each): the model
# types whose transformers code builds its masks with masking_utils, and the attention implementations for
# which masking_utils turns restarting position_ids into a block-diagonal mask.
PADDING_FREE_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma3_text")
PADDING_FREE_ATTENTION = ("eager", "sdpa")


# --------------------------------------------------------------------------- configuration


@dataclass
class CLOConfig(TrainingArguments):
    """TrainingArguments plus the CLO objective's knobs (docs/method.md §2)."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature of the cross-lingual preference term. "
                                                       "Not recovered from the paper; CRPO's re-run used 0.1."})
    lam: float = field(default=0.5, metadata={"help": "Weight of the target NLL: loss = lam*NLL + (1-lam)*L_CL "
                                                      "(0.5, 'recommended in the original paper' per CRPO)."})
    nll_on: str = field(default="target", metadata={"help": "'target': NLL on target-language chosen responses "
                                                            "only (paper); 'both': also English (the ablation)."})
    max_length: int = field(default=1024, metadata={"help": "Max tokens of one prompt+response sequence; a seed "
                                                            "with a longer sequence is dropped and counted."})
    disable_dropout: bool = field(default=True, metadata={"help": "Every dropout probability to 0, as in TRL's "
                                                                  "DPO: the policy at step 0 equals the reference, "
                                                                  "and the reward margins are not noise."})
    ref_cache_dir: str | None = field(default=None, metadata={"help": "Where reference log-probs are cached "
                                                                     "(default: the kit's cache dir)."})
    precompute_ref_batch_size: int = field(default=8, metadata={"help": "Seeds per batch in the reference pass."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every column."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "'group_by_length' (default): batches of seeds of similar length (clo_utils.batching), little "
                "compute on padding; 'random', 'sequential': the Trainer's samplers."})
    padding_free: bool = field(default=True, metadata={
        "help": "Pack a batch's sequences into one row (position_ids restart at 0 per sequence, no attention "
                "mask): no compute on padding. Used where it is proven equal to padded batches "
                "(PADDING_FREE_MODEL_TYPES with eager or sdpa attention); other models get padded batches."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"CLOConfig.beta must be > 0, got {self.beta}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"CLOConfig.lam must be in [0, 1], got {self.lam}")
        if self.nll_on not in NLL_ON:
            raise ValueError(f"CLOConfig.nll_on must be one of {NLL_ON}, got {self.nll_on!r}")


def training_profile(device: str = "auto") -> dict:
    """Trainer keyword arguments per hardware profile.

    CPU: fp32 without gradient checkpointing (TRL's defaults, bf16 and checkpointing, are slow on a
    CPU without bf16 arithmetic). GPU: bf16 autocast; `prepare_mixed_precision` keeps the trainable
    parameters in fp32.
    """
    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False, "gradient_checkpointing": False,
                "dataloader_num_workers": 0}
    if device == "gpu":
        return {"use_cpu": False, "bf16": True, "fp16": False, "gradient_checkpointing": False}
    raise ValueError(f"profile device must be 'auto', 'cpu' or 'gpu', got {device!r}")


# --------------------------------------------------------------------------- tokenisation


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    # The chat template renders BOS itself when the model wants one, so the text is tokenised
    # without adding special tokens again: one BOS, never two.
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        return_dict=True)
    return list(out["input_ids"])


def tokenize_prompt_response(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels are -100 on the prompt, the token ids on the response.

    Same convention as TRL's DPOTrainer: the completion is what the rendered full conversation
    adds after the prompt rendered with the generation prompt. If the template does not close the
    turn with EOS, EOS is appended so the model learns to stop.
    """
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template before training")
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, prompt + response)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template renders the prompt differently inside the full conversation; "
                         "CLO needs the prompt to be a token prefix of prompt+response")
    response_ids = full_ids[len(prompt_ids):]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in response_ids:
        response_ids.append(tokenizer.eos_token_id)
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def tokenize_clo_pairs(pairs: list[dict], tokenizer, max_length: int) -> tuple[list[dict], dict]:
    """One training example per seed: its four sequences (SEQUENCE_ORDER) tokenised.

    A seed whose en or tgt triple is missing is dropped and counted. A sequence longer than
    `max_length` is an error: `seeds_within_max_length` filters the seeds once, before any method
    tokenises them, so SFT, SFT+DPO and CLO train on the same seeds and never on a cut copy.
    """
    by_seed: dict[str, dict] = defaultdict(dict)
    for pair in pairs:
        if pair.get("direction") not in ("en", "tgt"):
            raise ValueError(f"pair for seed {pair.get('seed_id')!r}: direction must be 'en' or 'tgt', "
                             f"got {pair.get('direction')!r}")
        by_seed[pair["seed_id"]][pair["direction"]] = pair
    examples, stats = [], {"seeds_in": len(by_seed), "dropped_incomplete": 0}
    too_long = []
    for seed_id, triples in by_seed.items():
        if set(triples) != {"en", "tgt"}:
            stats["dropped_incomplete"] += 1
            continue
        seqs = []
        for name in SEQUENCE_ORDER:
            direction, side = name.split("_")
            triple = triples[direction]
            seqs.append(tokenize_prompt_response(tokenizer, triple["prompt"], triple[side]))
        if any(len(ids) > max_length for ids, _ in seqs):
            too_long.append(seed_id)
            continue
        examples.append({"seed_id": seed_id, "index": len(examples),
                         "input_ids": [ids for ids, _ in seqs], "labels": [lab for _, lab in seqs]})
    _refuse_too_long(too_long, len(by_seed), max_length, "CLO seeds")
    stats["seeds_kept"] = len(examples)
    if not examples:
        raise ValueError(f"no seed left to train on after tokenisation: {stats}")
    return examples, stats


def seeds_within_max_length(seeds: list[dict], tokenizer, max_length: int,
                            system_prompt: str | None = None) -> tuple[list[dict], list[str]]:
    """(the seeds whose four CLO sequences all fit `max_length` tokens, the ids of the others).

    The sequences are tokenised exactly as training tokenises them (`tokenize_prompt_response` on
    `build_cross_lingual_pairs`). Every SFT row and DPO pair of a seed is one of its four CLO
    sequences, so the kept seeds fit every method: filtering once here gives SFT, SFT+DPO and CLO
    the same seeds, where per-method dropping would keep the English half of a seed CLO drops.
    """
    from .data import build_cross_lingual_pairs

    seeds = list(seeds)
    too_long: set[str] = set()
    for pair in build_cross_lingual_pairs(seeds, system_prompt=system_prompt):
        if pair["seed_id"] in too_long:
            continue
        for side in ("chosen", "rejected"):
            if len(tokenize_prompt_response(tokenizer, pair["prompt"], pair[side])[0]) > max_length:
                too_long.add(pair["seed_id"])
                break
    kept = [s for s in seeds if s["id"] not in too_long]
    dropped = [s["id"] for s in seeds if s["id"] in too_long]
    if not kept:
        raise ValueError(f"no seed fits max_length={max_length} tokens: all {len(seeds)} have a longer "
                         "prompt+response sequence; raise max_length")
    if dropped:
        log.warning("dropped %d of %d seeds with a sequence longer than max_length=%d tokens: %s",
                    len(dropped), len(seeds), max_length, dropped[:10])
    return kept, dropped


def _refuse_too_long(ids: list, n_total: int, max_length: int | None, what: str) -> None:
    if ids:
        raise ValueError(f"{len(ids)} of {n_total} {what} are longer than max_length={max_length} tokens "
                         f"(seeds {list(dict.fromkeys(ids))[:5]}): filter the seeds once with "
                         "seeds_within_max_length(seeds, tokenizer, max_length) before building the rows, so that "
                         "every method trains on the same seeds")


def pad_sequences(seqs: list[list[int]], labels: list[list[int]], pad_token_id: int) -> dict:
    """(len(seqs), L) right-padded input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    label_t = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (s, lab) in enumerate(zip(seqs, labels)):
        input_ids[row, : len(s)] = torch.tensor(s)
        label_t[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


def pack_sequences(seqs: list[list[int]], labels: list[list[int]]) -> dict:
    """The sequences end to end in one (1, T) row, T their total length: no padding.

    `position_ids` restart at 0 with each sequence, and there is no attention mask: transformers then
    builds a block-diagonal causal mask from the position_ids (masking_utils.find_packed_sequence_indices),
    so each sequence attends to itself only, at the positions it has alone. `segment_ids` says which
    sequence each position belongs to. Each sequence's first label is -100, so no position predicts
    the next sequence's first token (a prompt token, never a label in CLO).
    """
    labels = [[-100, *lab[1:]] for lab in labels]
    lengths = torch.tensor([len(s) for s in seqs])
    return {"input_ids": torch.tensor([t for s in seqs for t in s]).unsqueeze(0),
            "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
            "labels": torch.tensor([t for lab in labels for t in lab]).unsqueeze(0),
            "segment_ids": torch.repeat_interleave(torch.arange(len(seqs)), lengths).unsqueeze(0)}


@dataclass
class CLOCollator:
    """A batch of seeds as its 4 * n_seeds sequences (SEQUENCE_ORDER per seed): right-padded into a
    (4 * n_seeds, L) batch, or with `padding_free` packed into one row (`pack_sequences`).

    The batching unit is the seed, so both triples of a seed always share a batch, on one process,
    whatever the shuffling.
    """

    pad_token_id: int
    padding_free: bool = False

    def __call__(self, features: list[dict]) -> dict:
        seqs = [ids for f in features for ids in f["input_ids"]]
        labels = [lab for f in features for lab in f["labels"]]
        batch = pack_sequences(seqs, labels) if self.padding_free else pad_sequences(seqs, labels, self.pad_token_id)
        batch["seed_index"] = torch.tensor([f["index"] for f in features])
        if "ref_logps" in features[0]:
            batch["ref_logps"] = torch.tensor([f["ref_logps"] for f in features], dtype=torch.float32)
        return batch


# --------------------------------------------------------------------------- precision and dropout


def prepare_mixed_precision(model, args: TrainingArguments) -> None:
    """Trainable parameters in fp32 (master weights) when the model is loaded in bf16 or fp16.

    An AdamW update at the paper's lr (8e-6) is smaller than half a bf16 step for every weight above
    about 4e-3, so bf16 weights stepped in place never move. In fp32 the updates accumulate; the
    forward still computes in bf16 under the trainer's autocast (`bf16=True`). Frozen weights stay
    as loaded. Without autocast, fp32 and bf16 weights would meet in one matmul: a clear error.
    """
    half = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if not half:
        return
    if not (args.bf16 or args.fp16):
        raise ValueError(f"{len(half)} trainable parameter tensors are in half precision (first: {half[0]}) but "
                         "the training arguments set no mixed precision: bf16 weights do not take small AdamW "
                         "updates. Pass training_profile('gpu') (bf16=True), or load the model with dtype='float32'")
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
    log.info("mixed precision: %d trainable parameter tensors in fp32, compute in %s",
             len(half), "bf16" if args.bf16 else "fp16")


def disable_dropout(model) -> None:
    """Every dropout probability to 0: the nn.Dropout modules (what TRL's disable_dropout_in_model
    does) and the attention-probability dropout that attention modules read as a float."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


# --------------------------------------------------------------------------- fingerprints


def model_fingerprint(model) -> str:
    """sha256 of the reference weights (adapter weights excluded: with LoRA the reference is the
    model with adapters disabled). Same scheme as trl.trainer.utils.hash_module."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        tensor = tensor.detach().cpu()
        h.update(name.encode() + str(tensor.dtype).encode())
        if tensor.dtype not in (torch.float32, torch.float64, torch.int64, torch.int32):
            tensor = tensor.float()  # numpy has no bf16/fp8
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- trainer


def padding_free_support(model) -> str | None:
    """None when packed batches are proven for `model`, else why not (for the log)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    attn = getattr(config, "_attn_implementation", None)
    if model_type not in PADDING_FREE_MODEL_TYPES:
        return f"model type {model_type!r} is not among {PADDING_FREE_MODEL_TYPES}"
    if attn not in PADDING_FREE_ATTENTION:
        return f"attention implementation {attn!r} is not among {PADDING_FREE_ATTENTION}"
    return None


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), in MB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class CLOTrainer(Trainer):
    """Trainer for the CLO objective. `train_dataset` is the output of `tokenize_clo_pairs`.

    Reference log-probs are computed once, before training, by the same model in eval mode
    (adapters disabled for LoRA), and cached on disk keyed by model and data fingerprints.
    """

    # The Trainer divides compute_loss's value by the number of micro-batches in the accumulation
    # window: the preference term is a mean over triples per micro-batch, and the NLL term is scaled
    # in compute_loss so that this division leaves the token mean over the window. (Left at None,
    # transformers would infer from model.accepts_loss_kwargs that the loss is already scaled.)
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: CLOConfig, train_dataset: list[dict], processing_class=None, **kwargs):
        from datasets import Dataset

        if not isinstance(args, CLOConfig):
            raise TypeError("CLOTrainer needs a CLOConfig")
        tokenizer = processing_class
        pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        self.pad_token_id = pad_id
        self.padding_free = args.padding_free
        if args.padding_free and (why_not := padding_free_support(model)) is not None:
            log.info("padded training batches: padding-free packing is not proven here (%s)", why_not)
            self.padding_free = False
        kwargs.setdefault("data_collator", CLOCollator(pad_id, padding_free=self.padding_free))
        examples = list(train_dataset)
        prepare_mixed_precision(model, args)
        if args.disable_dropout:
            disable_dropout(model)
        super().__init__(model=model, args=args, train_dataset=None, processing_class=processing_class, **kwargs)
        self._logits_to_keep_works = True  # set False once a model rejects or ignores the mask
        self.reference_forward_batches = 0  # counted so tests and logs can see a cache hit
        self.reference_seeds_computed = 0
        self.reference_cache_path: Path | None = None
        self._nll_window_tokens: torch.Tensor | None = None  # target tokens of this accumulation window, all processes
        if "ref_logps" not in examples[0]:
            ref = self.compute_reference_logps(examples)
            examples = [{**ex, "ref_logps": ref[ex["index"]].tolist()} for ex in examples]
        self.train_dataset = Dataset.from_list(examples)
        self._stored_metrics: dict[str, list[float]] = defaultdict(list)

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        from .batching import LengthGroupedSeedSampler, seed_lengths

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # Grouped in units of the global batch: consecutive micro-batches (and accelerate's round-robin
        # shards) cut that order, so one optimizer step sees the same seeds however it is split.
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return LengthGroupedSeedSampler(seed_lengths(dataset["input_ids"]), global_batch, seed=seed)

    # -- reference pass
    def compute_reference_logps(self, examples: list[dict]) -> torch.Tensor:
        """(n_seeds, 4) fp32 reference log-probs, each seed read from the disk cache when present.

        The cache holds one record per seed, keyed by the reference weights and that seed's tokens,
        so a rerun computes nothing and the nested budgets of a data-efficiency sweep (1,600 of the
        3,200 of the 6,400) compute each seed's reference pass once.
        """
        self._check_whole_weights()
        model_key = model_fingerprint(self.model) + "|" + self.reference_conditions()
        keys = [cache_key(REFERENCE_CACHE_VERSION, model_key, ex["input_ids"], ex["labels"]) for ex in examples]
        self.reference_cache_path = Path(self.args.ref_cache_dir or default_cache_dir() / "ref_logps") / "ref_logps.sqlite"
        with DiskCache(self.reference_cache_path) as store:
            cached = store.get_many(keys)
        ref = torch.tensor([cached.get(k, [float("nan")] * len(SEQUENCE_ORDER)) for k in keys], dtype=torch.float32)
        todo = [ex for ex, k in zip(examples, keys) if k not in cached]
        log.info("reference log-probs: %d of %d seeds cached at %s", len(examples) - len(todo), len(examples),
                 self.reference_cache_path)
        if todo:
            self._reference_pass(todo, ref)
            if self.accelerator.is_main_process:  # one transaction: a kill keeps all of it or none
                with DiskCache(self.reference_cache_path) as store:
                    store.put_many({keys[ex["index"]]: ref[ex["index"]].tolist() for ex in todo})
            self.accelerator.wait_for_everyone()
        if torch.isnan(ref).any():
            raise RuntimeError("reference pass left seeds without log-probs")
        return ref

    def reference_conditions(self) -> str:
        """What changes the reference log-probs besides weights and tokens, for the cache key: the
        autocast dtype, the device type, the attention implementation and the library versions."""
        import transformers

        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        return (f"mixed_precision={self.accelerator.mixed_precision}|device={self.accelerator.device.type}|"
                f"attn={attn}|torch={torch.__version__}|transformers={transformers.__version__}")

    def _reference_pass(self, todo: list[dict], ref: torch.Tensor) -> None:
        """Fill ref[index] for the seeds in `todo` with the starting model (adapters off for LoRA).

        Each sequence's log-prob depends on that sequence alone, so the pass batches single sequences,
        not seeds: sorted by length (`batching.sequence_batches`), each row is padded only to rows of
        nearly its own length, and each log-prob goes back to ref[seed, column].
        """
        from .batching import sequence_batches

        rows_per_batch = len(SEQUENCE_ORDER) * self.args.precompute_ref_batch_size
        batches = sequence_batches([[len(ids) for ids in ex["input_ids"]] for ex in todo], rows_per_batch)
        rows = [{"index": todo[i]["index"], "column": c, "input_ids": todo[i]["input_ids"][c],
                 "labels": todo[i]["labels"][c]} for batch in batches for i, c in batch]

        def collate(features):
            batch = pad_sequences([f["input_ids"] for f in features], [f["labels"] for f in features],
                                  self.pad_token_id)
            return {**batch, "index": torch.tensor([f["index"] for f in features]),
                    "column": torch.tensor([f["column"] for f in features])}

        # Every batch but the last is full, so the loader cuts `rows` back into `batches`.
        loader = torch.utils.data.DataLoader(rows, batch_size=rows_per_batch, shuffle=False, collate_fn=collate)
        loader = self.accelerator.prepare(loader)
        self._place_for_reference_pass()
        was_training = self.model.training
        self.model.eval()
        adapters_off = (self.model.disable_adapter() if hasattr(self.model, "disable_adapter")
                        else contextlib.nullcontext())
        # The training forward runs under accelerate's autocast (bf16 on the GPU profile); the
        # reference runs under the same one, so that policy and reference agree at step 0.
        with torch.no_grad(), adapters_off, self.accelerator.autocast():
            for batch in loader:
                (logps, _), _ = self._response_logps(self.model, batch)
                index, column, logps = self.accelerator.gather_for_metrics((batch["index"], batch["column"], logps))
                ref[index.cpu(), column.cpu()] = logps.float().cpu()
                self.reference_forward_batches += 1
        self.reference_seeds_computed += len(todo)
        self.model.train(was_training)

    # -- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n_seeds = inputs["seed_index"].shape[0]
        (logps, counts), out = self._response_logps(model, inputs)
        logps, counts = logps.view(n_seeds, 4), counts.view(n_seeds, 4)
        ref = inputs["ref_logps"].to(logps.device)
        # Triples, interleaved per seed: (en: col 0 over col 1), (tgt: col 2 over col 3).
        chosen, rejected = logps[:, [0, 2]].reshape(-1), logps[:, [1, 3]].reshape(-1)
        ref_chosen, ref_rejected = ref[:, [0, 2]].reshape(-1), ref[:, [1, 3]].reshape(-1)
        chosen_counts = counts[:, [0, 2]].reshape(-1)
        is_target = torch.tensor([False, True] * n_seeds, device=logps.device)
        nll = response_nll(chosen, chosen_counts, is_target, self.args.nll_on)
        nll = self._nll_over_window(nll, chosen_counts, is_target)
        loss, metrics = clo_loss(chosen, rejected, ref_chosen, ref_rejected, nll, beta=self.args.beta,
                                 lam=self.args.lam, directions=["en", "tgt"] * n_seeds)
        if self._any_process(not torch.isfinite(loss).item()):
            # Stop before backward: the weights are still those of the last good step. Every process
            # learns of it (a process raising alone would leave the others waiting in the all-reduce).
            ids = self._seed_ids(inputs)
            raise FloatingPointError(f"non-finite CLO loss ({loss.item()}) at global step {self.state.global_step}, "
                                     f"seeds {ids}{self._where()}; metrics { {k: float(v) for k, v in metrics.items()} }")
        for k, v in metrics.items():
            self._stored_metrics[k].append(float(v))
        return (loss, out) if return_outputs else loss

    def _response_logps(self, model, batch):
        """((B,) summed response log-probs, (B,) counts), model output. The LM head runs on the
        response positions only (`logits_to_keep` mask): prompt and padding rows of the (T, V)
        logits, and their gradient, are never built."""
        keep = response_positions(batch["labels"])
        segments = batch.get("segment_ids")  # present in packed batches (CLOCollator with padding_free)
        if segments is None:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
            per_sequence = {}
        else:  # no attention mask: transformers derives the block-diagonal one from position_ids
            inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
            per_sequence = {"segments": segments, "n_sequences": len(SEQUENCE_ORDER) * batch["seed_index"].numel()}
        out = None
        if self._logits_to_keep_works:
            try:
                out = model(**inputs, logits_to_keep=keep)
            except TypeError as err:  # custom model code without the argument
                if "logits_to_keep" not in str(err):
                    raise
                log.warning("%s has no logits_to_keep argument: computing logits at every position",
                            type(model).__name__)
            if out is not None and out.logits.ndim == 2:
                return packed_sequence_logps(out.logits, batch["labels"], keep, **per_sequence), out
            self._logits_to_keep_works = False  # rejected, or accepted and ignored (logits at every position)
        if out is None:
            out = model(**inputs)
        if segments is not None:
            return packed_sequence_logps(out.logits[keep], batch["labels"], keep, **per_sequence), out
        return sequence_logps(out.logits, batch["labels"]), out

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # A finite loss can still give non-finite gradients (an overflow in backward, an inf weight
        # reached only through the gradient). The optimizer step comes after this method returns:
        # stop here, so the weights stay those of the last good step. (Under DDP the gradients are
        # already all-reduced, so every process sees the same; DeepSpeed/FSDP keep their own grads.)
        if not self.accelerator.sync_gradients:  # checked once per optimizer step, on the summed gradients
            return loss
        self._nll_window_tokens = None  # the window is complete
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        # One fused pass (the per-tensor norms clip_grad_norm_ computes too), not one isfinite per tensor.
        if grads and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            bad = [n for n, p in model.named_parameters()
                   if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all()]
            raise FloatingPointError(f"non-finite gradient at global step {self.state.global_step}, seeds "
                                     f"{self._seed_ids(inputs)}{self._where()} (loss {loss.item()}): inf/nan in "
                                     f"{len(bad)} parameter tensors, first {bad[:3]} (or a gradient norm overflowing "
                                     "float32); the optimizer step was not taken")
        return loss

    def _seed_ids(self, inputs) -> list[str]:
        return [self.train_dataset[int(i)]["seed_id"] for i in inputs["seed_index"]]

    def _where(self) -> str:
        world = self.accelerator.num_processes
        return f" on process {self.accelerator.process_index} of {world}" if world > 1 else ""

    def _any_process(self, flag: bool) -> bool:
        """True when `flag` is true on any process (one all-reduce of a scalar when distributed)."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor(float(flag), device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").item() > 0

    def _check_whole_weights(self) -> None:
        """The reference pass and its cache key need the whole weights on this process."""
        for name, p in self.model.named_parameters():
            if hasattr(p, "ds_id") or p.device.type == "meta":
                raise RuntimeError(
                    f"parameter {name} is partitioned (DeepSpeed ZeRO-3 zero3_init_flag) or on the meta device "
                    "(FSDP cpu_ram_efficient_loading): CLO computes reference log-probs and their cache key from "
                    "the whole model before training. Set zero3_init_flag: false / fsdp_cpu_ram_efficient_loading: "
                    "false (params/accelerate/*.yaml), or precompute them in a DDP/ZeRO-2 run (they are cached).")

    def _place_for_reference_pass(self) -> None:
        # Under DeepSpeed or FSDP the Trainer leaves the model where it was loaded (CPU) until
        # train() wraps it, but the prepared loader puts batches on this process's device.
        if getattr(self, "is_model_parallel", False):  # device_map spreads it over GPUs: leave it there
            return
        device = self.accelerator.device
        first = next(self.model.parameters())
        if first.device != device:
            log.info("reference pass: moving the model from %s to %s", first.device, device)
            self.model.to(device)

    def _nll_target_tokens(self, batch: dict) -> torch.Tensor:
        """Tokens that the NLL term averages over in a collated batch (target chosen, or every chosen)."""
        keep = response_positions(batch["labels"])
        if "segment_ids" in batch:  # packed: count per sequence, not per row
            n_sequences = len(SEQUENCE_ORDER) * batch["seed_index"].numel()
            counts = torch.bincount(batch["segment_ids"][keep], minlength=n_sequences)
        else:
            counts = keep.sum(-1)
        counts = counts.view(-1, len(SEQUENCE_ORDER))
        cols = [2] if self.args.nll_on == "target" else [0, 2]
        return counts[:, cols].sum()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's micro-batches of one optimizer step, and the NLL's token count over all of
        them on every process: the denominator of the token mean over the global batch."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        tokens = sum((self._nll_target_tokens(b) for b in batch_samples), torch.tensor(0))
        tokens = tokens.to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        self._nll_window_tokens = tokens
        return batch_samples, num_items_in_batch

    def _nll_over_window(self, nll, counts, is_target):
        """Rescale the micro-batch's token-mean NLL so that what the optimizer sees (the Trainer divides
        by the window's micro-batches, DDP averages over processes) is the token mean over the global
        batch: sum of log-probs / all its target tokens, however the batch is split. Outside a
        training window (a direct compute_loss call) the micro-batch's own mean is kept."""
        if self._nll_window_tokens is None or not self.model.training:
            return nll
        keep = is_target if self.args.nll_on == "target" else torch.ones_like(is_target)
        local = counts[keep].sum().float()
        scale = local * self.current_gradient_accumulation_steps * self.accelerator.num_processes
        return nll * scale / self._nll_window_tokens.float().clamp(min=1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._stored_metrics:  # training logs: add the CLO terms averaged since last log
            names = sorted(self._stored_metrics)
            means = torch.tensor([sum(self._stored_metrics[k]) / len(self._stored_metrics[k]) for k in names],
                                 dtype=torch.float64, device=self.accelerator.device)
            if self.accelerator.num_processes > 1:
                # Every process holds the same number of triples per step, so the mean of the
                # per-process means is the global mean (for nll_loss: the rescaled per-process terms
                # average to the global token mean, see _nll_over_window). log() runs on every process.
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({k: float(v) for k, v in zip(names, means.tolist())})
            self._stored_metrics.clear()
        super().log(logs, start_time)


class PeakMemoryCallback(TrainerCallback):
    """Records wall time and peak memory of training into `summary` (read by train.json writers)."""

    def __init__(self):
        self.summary: dict[str, float] = {}
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._start
        self.summary.update(train_seconds=seconds, peak_memory_mb=peak_memory_mb(),
                            seconds_per_step=seconds / max(state.global_step, 1), steps=state.global_step)


class TrainableChangeCallback(TrainerCallback):
    """Records `trainable_changed_fraction` into `summary`: the share of trainable elements whose value
    differs from the start of training, and warns when it is near zero (weights that never move, as
    with bf16 weights stepped in place). The snapshot costs one copy of the trainable parameters in
    host memory."""

    def __init__(self, warn_below: float = 0.01):
        self.summary: dict[str, float | None] = {}
        self.warn_below = warn_below
        self._start: dict[str, torch.Tensor] = {}
        self._from_step = 0

    @staticmethod
    def _trainable(model):
        for name, p in model.named_parameters():
            if p.requires_grad:
                t = p.detach()
                yield name, (t.to_local() if hasattr(t, "to_local") else t)  # FSDP2: this process's shard

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A resumed run starts from its checkpoint: the fraction then counts from that step (recorded).
        self._from_step = state.global_step
        self._start = {name: t.to("cpu", copy=True) for name, t in self._trainable(model)}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        changed = total = 0
        for name, t in self._trainable(model):
            if name in self._start and self._start[name].shape == t.shape:
                changed += int((t.cpu() != self._start[name]).sum())
                total += t.numel()
        self._start = {}
        fraction = changed / total if total else None  # None: no local elements (ZeRO-3 partitions)
        self.summary["trainable_changed_fraction"] = fraction
        self.summary["trainable_changed_from_step"] = self._from_step
        if fraction is not None and state.global_step > self._from_step and fraction < self.warn_below:
            log.warning("after %d optimizer steps only %.4f%% of the trainable elements differ from the start: the "
                        "weights barely learn (bf16 weights without fp32 master copies? a learning rate of 0?)",
                        state.global_step, 100 * fraction)


def _summary_callbacks() -> tuple[PeakMemoryCallback, TrainableChangeCallback]:
    return PeakMemoryCallback(), TrainableChangeCallback()


# --------------------------------------------------------------------------- entry points


def train_clo(model, tokenizer, pairs: list[dict], config: CLOConfig, callbacks: list | None = None):
    """Tokenise the cross-lingual pairs, run CLO, return (trainer, summary)."""
    examples, token_stats = tokenize_clo_pairs(pairs, tokenizer, config.max_length)
    memory, change = _summary_callbacks()
    trainer = CLOTrainer(model=model, args=config, train_dataset=examples, processing_class=tokenizer,
                         callbacks=[memory, change, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=_resume_arg(config))
    summary = {**token_stats, **memory.summary, **change.summary,
               "reference_forward_batches": trainer.reference_forward_batches,
               "reference_seeds_computed": trainer.reference_seeds_computed}
    return trainer, summary


def _resume_arg(config: TrainingArguments):
    # Resume when the output folder already holds a checkpoint (a killed run picks up where it was).
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def sft_config(output_dir: str, max_length: int = 1024, device: str = "auto", **overrides):
    """TRL SFTConfig for the baseline: completion-only loss on conversational prompt-completion rows, in
    batches of rows of similar length (transformers' LengthGroupedSampler), as CLO's batches are."""
    from trl import SFTConfig

    kwargs = {"output_dir": output_dir, "max_length": max_length, "completion_only_loss": True,
              "report_to": "none", "packing": False, "train_sampling_strategy": "group_by_length",
              **training_profile(device)}
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def tokenize_sft_rows(rows: list[dict], tokenizer, max_length: int | None) -> list[dict]:
    """TRL pre-tokenised rows {"input_ids", "labels"} from `build_sft_rows`, tokenised like CLO's
    sequences (`tokenize_prompt_response`): every method's labels end the same way."""
    out, too_long = [], []
    for row in rows:
        ids, labels = tokenize_prompt_response(tokenizer, row["prompt"], row["completion"])
        if max_length is not None and len(ids) > max_length:
            too_long.append(row.get("seed_id", len(out)))
        out.append({"input_ids": ids, "labels": labels})
    _refuse_too_long(too_long, len(out), max_length, "SFT rows")
    return out


def train_sft(model, tokenizer, sft_rows: list[dict], config, callbacks: list | None = None):
    """The SFT baseline with TRL's SFTTrainer on rows from `build_sft_rows` (both / en / tgt).

    TRL gets the rows pre-tokenised by `tokenize_sft_rows`, so its labels are CLO's: the same
    response ending, the loss on the response only. The model arrives with its trainable subset
    already chosen (`select_trainable`), so SFT and CLO update the same parameters.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    dataset = Dataset.from_list(tokenize_sft_rows(list(sft_rows), tokenizer, getattr(config, "max_length", None)))
    prepare_mixed_precision(model, config)
    memory, change = _summary_callbacks()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[memory, change, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=_resume_arg(config))
    return trainer, {"rows": len(dataset), **memory.summary, **change.summary}


def dpo_config(output_dir: str, beta: float = 0.1, max_length: int = 1024, device: str = "auto", **overrides):
    """TRL DPOConfig for the SFT+DPO baseline: sigmoid loss, reference log-probs precomputed, batches of
    pairs of similar length (the rows' `length` column, see `tokenize_dpo_pairs`)."""
    from trl import DPOConfig

    kwargs = {"output_dir": output_dir, "beta": beta, "max_length": max_length, "loss_type": ["sigmoid"],
              "precompute_ref_log_probs": True, "report_to": "none", "train_sampling_strategy": "group_by_length",
              **training_profile(device)}
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def tokenize_dpo_pairs(pairs: list[dict], tokenizer, max_length: int | None) -> list[dict]:
    """TRL pre-tokenised preference rows {"prompt_ids", "chosen_ids", "rejected_ids"}, tokenised
    like CLO's sequences (`tokenize_prompt_response`), and the padded width each pair asks for
    ("length": prompt plus the longer completion), read by group_by_length sampling."""
    out, too_long = [], []
    for pair in pairs:
        chosen, labels = tokenize_prompt_response(tokenizer, pair["prompt"], pair["chosen"])
        rejected, _ = tokenize_prompt_response(tokenizer, pair["prompt"], pair["rejected"])
        n_prompt = next(i for i, x in enumerate(labels) if x != -100)
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            too_long.append(pair.get("seed_id", len(out)))
        out.append({"prompt_ids": chosen[:n_prompt], "chosen_ids": chosen[n_prompt:],
                    "rejected_ids": rejected[n_prompt:], "length": max(len(chosen), len(rejected))})
    _refuse_too_long(too_long, len(out), max_length, "preference pairs")
    return out


def _pretokenized_dpo_trainer():
    """TRL's DPOTrainer on rows from `tokenize_dpo_pairs`: its own tokenisation is skipped, and the
    rows' `length` column survives the removal of unused columns (group_by_length sampling reads it;
    TRL's collator ignores it)."""
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "length" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "length"]

    return PreTokenizedDPOTrainer


def _fsdp_enabled(config) -> bool:
    """FSDP requested by the training arguments or by `accelerate launch` (its environment)."""
    import os

    return bool(getattr(config, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def train_dpo(model, tokenizer, pairs: list[dict], config, callbacks: list | None = None):
    """DPO with TRL's DPOTrainer on the same cross-lingual pairs (the second stage of SFT+DPO).

    The reference is the model as it arrives (the SFT model). Without FSDP, TRL takes it from the
    policy itself; under FSDP, TRL would reload the config's `_name_or_path` (the untouched base),
    so a frozen copy is passed as `ref_model`, used for the precomputed log-probs, then released.
    """
    from datasets import Dataset

    dataset = Dataset.from_list(tokenize_dpo_pairs(list(pairs), tokenizer, getattr(config, "max_length", None)))
    prepare_mixed_precision(model, config)
    ref_model = None
    if _fsdp_enabled(config):
        if not getattr(config, "precompute_ref_log_probs", False):
            raise ValueError("SFT+DPO under FSDP needs precompute_ref_log_probs=True (dpo_config's default): the "
                             "reference is the SFT model, passed once for the precomputed log-probs")
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    memory, change = _summary_callbacks()
    trainer = _pretokenized_dpo_trainer()(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                                          processing_class=tokenizer, callbacks=[memory, change, *(callbacks or [])])
    if ref_model is not None:  # the log-probs are precomputed: the copy is no longer needed
        trainer.ref_model = None
    trainer.train(resume_from_checkpoint=_resume_arg(config))
    return trainer, {"pairs": len(dataset), **memory.summary, **change.summary}
