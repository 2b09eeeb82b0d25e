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
REFERENCE_CACHE_VERSION = "clo-ref-v2"  # in every reference cache key: a changed computation never reuses old values


# --------------------------------------------------------------------------- configuration


@dataclass
class CLOConfig(TrainingArguments):
    """TrainingArguments plus the CLO objective's knobs (clo-method.md §2)."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature of the cross-lingual preference term. "
                                                       "Not recovered from the paper; CRPO's re-run used 0.1."})
    lam: float = field(default=0.5, metadata={"help": "Weight of the target NLL: loss = lam*NLL + (1-lam)*L_CL "
                                                      "(0.5, 'recommended in the original paper' per CRPO)."})
    nll_on: str = field(default="target", metadata={"help": "'target': NLL on target-language chosen responses "
                                                            "only (paper); 'both': also English (the ablation)."})
    max_length: int = field(default=1024, metadata={"help": "Max tokens of one prompt+response sequence; a seed "
                                                            "with a longer sequence is dropped and counted."})
    ref_cache_dir: str | None = field(default=None, metadata={"help": "Where reference log-probs are cached "
                                                                     "(default: the kit's cache dir)."})
    precompute_ref_batch_size: int = field(default=8, metadata={"help": "Seeds per batch in the reference pass."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every column."})
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

    CPU: fp32 without gradient checkpointing (TRL 1.x defaults bf16=True and checkpointing, which
    made a SmolLM2 step 16x slower on a CPU without bf16). GPU: bf16.
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

    A seed whose en or tgt triple is missing, or with any sequence longer than `max_length`, is
    dropped and counted: never trained with truncated or empty labels.
    """
    by_seed: dict[str, dict] = defaultdict(dict)
    for pair in pairs:
        if pair.get("direction") not in ("en", "tgt"):
            raise ValueError(f"pair for seed {pair.get('seed_id')!r}: direction must be 'en' or 'tgt', "
                             f"got {pair.get('direction')!r}")
        by_seed[pair["seed_id"]][pair["direction"]] = pair
    examples, stats = [], {"seeds_in": len(by_seed), "dropped_incomplete": 0, "dropped_too_long": 0}
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
            stats["dropped_too_long"] += 1
            continue
        examples.append({"seed_id": seed_id, "index": len(examples),
                         "input_ids": [ids for ids, _ in seqs], "labels": [lab for _, lab in seqs]})
    stats["seeds_kept"] = len(examples)
    if not examples:
        raise ValueError(f"no seed left to train on after tokenisation (max_length={max_length}): {stats}")
    if stats["dropped_too_long"]:
        log.warning("dropped %d of %d seeds longer than max_length=%d tokens",
                    stats["dropped_too_long"], stats["seeds_in"], max_length)
    return examples, stats


@dataclass
class CLOCollator:
    """Pads a batch of seeds into one (4 * n_seeds, L) batch, right-padded, labels -100 on padding.

    The batching unit is the seed, so both triples of a seed always share a batch, on one process,
    whatever the shuffling.
    """

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        seqs = [ids for f in features for ids in f["input_ids"]]
        labels = [lab for f in features for lab in f["labels"]]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        label_t = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, (s, lab) in enumerate(zip(seqs, labels)):
            input_ids[row, : len(s)] = torch.tensor(s)
            label_t[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(s)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": label_t,
                 "seed_index": torch.tensor([f["index"] for f in features])}
        if "ref_logps" in features[0]:
            batch["ref_logps"] = torch.tensor([f["ref_logps"] for f in features], dtype=torch.float32)
        return batch


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

    # compute_loss returns a per-micro-batch mean and ignores num_items_in_batch, so the Trainer must
    # divide it by the gradient-accumulation steps. Left at None, transformers decides from
    # model.accepts_loss_kwargs (True for Llama and most causal LMs) that the loss is already scaled,
    # and with gradient_accumulation_steps=k the gradient and the logged loss came out k times too large.
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: CLOConfig, train_dataset: list[dict], processing_class=None, **kwargs):
        from datasets import Dataset

        if not isinstance(args, CLOConfig):
            raise TypeError("CLOTrainer needs a CLOConfig")
        tokenizer = processing_class
        pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        kwargs.setdefault("data_collator", CLOCollator(pad_id))
        examples = list(train_dataset)
        super().__init__(model=model, args=args, train_dataset=None, processing_class=processing_class, **kwargs)
        self._logits_to_keep_works = True  # set False once a model rejects or ignores the mask
        self.reference_forward_batches = 0  # counted so tests and logs can see a cache hit
        self.reference_seeds_computed = 0
        self.reference_cache_path: Path | None = None
        if "ref_logps" not in examples[0]:
            ref = self.compute_reference_logps(examples)
            examples = [{**ex, "ref_logps": ref[ex["index"]].tolist()} for ex in examples]
        self.train_dataset = Dataset.from_list(examples)
        self._stored_metrics: dict[str, list[float]] = defaultdict(list)

    # -- reference pass
    def compute_reference_logps(self, examples: list[dict]) -> torch.Tensor:
        """(n_seeds, 4) fp32 reference log-probs, each seed read from the disk cache when present.

        The cache holds one record per seed, keyed by the reference weights and that seed's tokens,
        so a rerun computes nothing and the nested budgets of a data-efficiency sweep (1,600 of the
        3,200 of the 6,400) compute each seed's reference pass once.
        """
        self._check_whole_weights()
        model_key = model_fingerprint(self.model)
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

    def _reference_pass(self, todo: list[dict], ref: torch.Tensor) -> None:
        """Fill ref[index] for the seeds in `todo` with the starting model (adapters off for LoRA)."""
        # Longest first and similar lengths together: little compute goes to padding.
        todo = sorted(todo, key=lambda ex: -max(len(ids) for ids in ex["input_ids"]))
        loader = torch.utils.data.DataLoader(todo, batch_size=self.args.precompute_ref_batch_size,
                                             shuffle=False, collate_fn=self.data_collator)
        loader = self.accelerator.prepare(loader)
        self._place_for_reference_pass()
        was_training = self.model.training
        self.model.eval()
        adapters_off = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else _nullcontext()
        with torch.no_grad(), adapters_off:
            for batch in loader:
                (logps, _), _ = self._response_logps(self.model, batch)
                logps = logps.view(-1, len(SEQUENCE_ORDER))
                index, logps = self.accelerator.gather_for_metrics((batch["seed_index"], logps))
                ref[index.cpu()] = logps.float().cpu()
                self.reference_forward_batches += 1
                self.reference_seeds_computed += len(index)
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
        nll = self._token_mean_across_processes(nll, chosen_counts, is_target)
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
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
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
                return packed_sequence_logps(out.logits, batch["labels"], keep), out
            self._logits_to_keep_works = False  # rejected, or accepted and ignored (logits at every position)
        if out is None:
            out = model(**inputs)
        return sequence_logps(out.logits, batch["labels"]), out

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # A finite loss can still give non-finite gradients (an overflow in backward, an inf weight
        # reached only through the gradient). The optimizer step comes after this method returns:
        # stop here, so the weights stay those of the last good step. (Under DDP the gradients are
        # already all-reduced, so every process sees the same; DeepSpeed/FSDP keep their own grads.)
        if not self.accelerator.sync_gradients:  # checked once per optimizer step, on the summed gradients
            return loss
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

    def _token_mean_across_processes(self, nll, counts, is_target):
        """With several processes, rescale so that the average of the per-process losses (what DDP
        optimises) is the token-mean NLL over the global batch, not a mean of per-process means."""
        world = self.accelerator.num_processes
        if world == 1:
            return nll
        keep = is_target if self.args.nll_on == "target" else torch.ones_like(is_target)
        local = counts[keep].sum().float()
        total = self.accelerator.reduce(local.detach().clone(), reduction="sum")
        return nll * local * world / total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._stored_metrics:  # training logs: add the CLO terms averaged since last log
            names = sorted(self._stored_metrics)
            means = torch.tensor([sum(self._stored_metrics[k]) / len(self._stored_metrics[k]) for k in names],
                                 dtype=torch.float64, device=self.accelerator.device)
            if self.accelerator.num_processes > 1:
                # Every process holds the same number of triples per step, so the mean of the
                # per-process means is the global mean (for nll_loss: the rescaled per-process terms
                # average to the global token mean, see _token_mean_across_processes). Without this
                # the log showed process 0's numbers only. log() runs on every process.
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({k: float(v) for k, v in zip(names, means.tolist())})
            self._stored_metrics.clear()
        super().log(logs, start_time)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


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


# --------------------------------------------------------------------------- entry points


def train_clo(model, tokenizer, pairs: list[dict], config: CLOConfig, callbacks: list | None = None):
    """Tokenise the cross-lingual pairs, run CLO, return (trainer, summary)."""
    examples, token_stats = tokenize_clo_pairs(pairs, tokenizer, config.max_length)
    memory = PeakMemoryCallback()
    trainer = CLOTrainer(model=model, args=config, train_dataset=examples, processing_class=tokenizer,
                         callbacks=[memory, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=_resume_arg(config))
    summary = {**token_stats, **memory.summary, "reference_forward_batches": trainer.reference_forward_batches,
               "reference_seeds_computed": trainer.reference_seeds_computed}
    return trainer, summary


def _resume_arg(config: TrainingArguments):
    # Resume when the output folder already holds a checkpoint (a killed run picks up where it was).
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def sft_config(output_dir: str, max_length: int = 1024, device: str = "auto", **overrides):
    """TRL SFTConfig for the baseline: completion-only loss on conversational prompt-completion rows."""
    from trl import SFTConfig

    kwargs = {"output_dir": output_dir, "max_length": max_length, "completion_only_loss": True,
              "report_to": "none", "packing": False, **training_profile(device)}
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def train_sft(model, tokenizer, sft_rows: list[dict], config, callbacks: list | None = None):
    """The SFT baseline with TRL's SFTTrainer on rows from `build_sft_rows` (both / en / tgt).

    The model arrives with its trainable subset already chosen (`select_trainable`), so SFT and
    CLO update the same parameters.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    rows, dropped = drop_too_long(tokenizer, list(sft_rows), ("completion",), getattr(config, "max_length", None), "SFT rows")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    memory = PeakMemoryCallback()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[memory, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=_resume_arg(config))
    return trainer, {"rows": len(dataset), "dropped_too_long": dropped, **memory.summary}


def drop_too_long(tokenizer, rows: list[dict], sides: tuple[str, ...], max_length: int | None, what: str):
    """(rows whose prompt + each of `sides` fits max_length tokens, number dropped).

    TRL truncates longer sequences silently, which cuts the response and its EOS; CLO drops such a
    seed instead (tokenize_clo_pairs), so the baselines drop too and never train on a cut copy.
    Lengths use CLO's tokenisation (the chat template, EOS appended when the template has none).
    """
    if max_length is None:
        return rows, 0
    kept = [r for r in rows if all(len(tokenize_prompt_response(tokenizer, r["prompt"], r[side])[0]) <= max_length
                                   for side in sides)]
    dropped = len(rows) - len(kept)
    if not kept:
        raise ValueError(f"no {what} left to train on: all {len(rows)} are longer than max_length={max_length} tokens")
    if dropped:
        log.warning("dropped %d of %d %s longer than max_length=%d tokens", dropped, len(rows), what, max_length)
    return kept, dropped


def dpo_config(output_dir: str, beta: float = 0.1, max_length: int = 1024, device: str = "auto", **overrides):
    """TRL DPOConfig for the SFT+DPO baseline: sigmoid loss, reference log-probs precomputed."""
    from trl import DPOConfig

    kwargs = {"output_dir": output_dir, "beta": beta, "max_length": max_length, "loss_type": ["sigmoid"],
              "precompute_ref_log_probs": True, "report_to": "none", **training_profile(device)}
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def train_dpo(model, tokenizer, pairs: list[dict], config, callbacks: list | None = None):
    """DPO with TRL's DPOTrainer on the same cross-lingual pairs (the second stage of SFT+DPO)."""
    from datasets import Dataset
    from trl import DPOTrainer

    pairs, dropped = drop_too_long(tokenizer, list(pairs), ("chosen", "rejected"), getattr(config, "max_length", None),
                                   "preference pairs")
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                 for p in pairs])
    memory = PeakMemoryCallback()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[memory, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=_resume_arg(config))
    return trainer, {"pairs": len(dataset), "dropped_too_long": dropped, **memory.summary}
