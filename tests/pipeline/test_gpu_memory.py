"""The pre-flight memory estimate: weight counts against real models, the activation term against what
autograd keeps, the refusal of a recipe that does not fit its GPU, and the offline dry-run of the shipped
one-GPU recipes."""

from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import save_tiny_llama, tiny_recipe

from clo_utils.pipeline import runner as pipeline
from clo_utils.pipeline.gpu_memory import (
    ACTIVATION_COEFFICIENTS,
    GPU_TYPES,
    GiB,
    estimate,
    memory_check,
    model_shape,
    parameter_counts,
    published_shapes,
)
from clo_utils.pipeline.recipe import RecipeError, load_recipe
from clo_utils.precision import Gpu

REPO = Path(__file__).resolve().parents[2]
T4 = Gpu("Tesla T4", 15 * GiB, bf16=False)
A100 = Gpu("A100", 80 * GiB, bf16=True)


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("trainable", ["attention", "full", "lora"])
def test_weight_counts_from_a_config_match_the_model_built_from_it(trainable):
    """Counts from config fields equal the numel of the transformers model: Llama (no attention
    bias, tied), Qwen2 (q/k/v biases, tied) and an untied Llama."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from clo_utils.models import select_trainable

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=160, vocab_size=300)
    for model_type, extra in (
        ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
        ("qwen2", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
        ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": False}),
    ):
        config = AutoConfig.for_model(model_type, **small, **extra)
        model, _ = select_trainable(AutoModelForCausalLM.from_config(config), trainable, lora_r=4)
        shape = {**small, **extra, "attention_bias": model_type == "qwen2"}
        counts = parameter_counts(shape, trainable, lora_r=4)
        base = [p for n, p in model.named_parameters() if "lora_" not in n]
        assert counts.weights == sum(p.numel() for p in base), (model_type, extra)
        assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_the_embedded_model_counts_come_from_its_own_config():
    shape, source = model_shape("embedded:smollm2-135m-instruct")
    assert source.endswith("config.json")
    counts = parameter_counts(shape, "attention")
    assert (counts.weights, counts.trainable) == (134_515_008, 26_542_080)  # SmolLM2-135M: 134.5M weights
    assert set(published_shapes()) >= {"Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct"}
    assert all(entry.get("source") for entry in published_shapes().values())


@pytest.mark.parametrize("trainable", ["attention", "full"])
def test_the_activation_term_is_what_autograd_keeps_per_token(trainable):
    """The fp32 coefficients against saved-tensor bytes of a Llama forward (per extra token, so the
    weights and per-layer constants cancel), for two shapes the fit did not use."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from clo_utils.models import select_trainable

    for h, inter, kv_heads, heads in ((192, 640, 3, 6), (320, 896, 2, 10)):
        config = LlamaConfig(
            hidden_size=h,
            intermediate_size=inter,
            num_hidden_layers=3,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            vocab_size=500,
        )
        model, _ = select_trainable(LlamaForCausalLM(config), trainable)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

        def saved_bytes(length, model=model, weights=weights):
            seen = {}

            def pack(t):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(input_ids=torch.randint(0, 500, (2, length)), logits_to_keep=1)
            return sum(n for ptr, n in seen.items() if ptr not in weights)

        measured = (saved_bytes(96) - saved_bytes(48)) / (2 * 48) / 3  # bytes per token and layer
        ch, ckv, ci = ACTIVATION_COEFFICIENTS[(trainable, "fp32")]
        formula = ch * h + ckv * kv_heads * (h // heads) + ci * inter
        assert formula == pytest.approx(measured, rel=0.03), (h, inter)


def test_the_estimate_adds_the_terms_of_the_precision_the_gpu_gets():
    shape = published_shapes()["Qwen/Qwen2.5-0.5B-Instruct"]
    counts = parameter_counts(shape, "attention")
    n, t = counts.weights, counts.trainable
    on_t4 = estimate("q", shape, T4, sequences=4, max_length=1000)
    assert on_t4.precision == "fp16"  # the fp32 training state (2.3 GiB) is above a tenth of 15 GiB
    h, kv, inter, layers, vocab = 896, 2 * 64, 4864, 24, 151936
    per_token = layers * (18 * h + 4 * kv + 6 * inter) + 8 * vocab  # autocast, fp32 weights
    assert on_t4.parts == {
        "weights": 4 * (n - t),  # fp32-loaded frozen weights (dtype auto on a GPU without bf16)
        "fp32 trainable": 4 * t,
        "gradients": 4 * t,
        "AdamW": 8 * t,
        "autocast copies": 2 * counts.linear,
        "activations": 4 * 1000 * per_token,
    }
    on_a100 = estimate("q", shape, A100, sequences=4, max_length=1000)
    assert on_a100.precision == "bf16" and on_a100.parts["weights"] == 2 * (n - t)
    assert on_a100.parts["autocast copies"] == 2 * t
    assert on_a100.total < on_t4.total


def test_a_recipe_that_does_not_fit_its_gpu_is_refused_with_the_numbers(tmp_path):
    model_dir = save_tiny_llama(tmp_path / "tiny")
    recipe = tiny_recipe(model_dir, languages=["ca"], budgets=[4], methods=["sft", "clo"], gpu={"type": "t4"})
    recipe["train"]["device"] = "auto"
    lines = memory_check(load_recipe(_write(tmp_path / "fits.yaml", recipe)))
    assert len(lines) == 2 and all(line.endswith("fits [shapes: " + f"{model_dir}/config.json]") for line in lines)
    assert "4 sequences x 512 tokens" in lines[0] and "8 sequences x 512 tokens" in lines[1]  # batch_seeds 2
    recipe["gpu"] = {"memory_gb": 0.05, "bf16": True}
    recipe["train"]["max_length"] = 4096
    path = _write(tmp_path / "big.yaml", recipe)
    with pytest.raises(RecipeError) as err:
        memory_check(load_recipe(path))
    message = str(err.value)
    assert f"{path}, line " in message and "clo: " in message and "DOES NOT FIT" in message
    assert "of 0.0 GiB usable" in message and "lower train.batch_seeds" in message


def test_the_gpu_key_is_checked(tmp_path):
    base = {"name": "x", "languages": ["ca"], "budgets": [4], "methods": ["clo"]}
    path = tmp_path / "a.yaml"
    path.write_text("name: x\nlanguages: [ca]\nbudgets: [4]\nmethods: [clo]\ngpu:\n  type: k80\n")
    with pytest.raises(RecipeError, match=r"a\.yaml, line 6: gpu.type: unknown GPU type 'k80'; known: t4"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="gpu: give a type .* or both memory_gb and bf16"):
        load_recipe(_write(tmp_path / "b.yaml", {**base, "gpu": {"memory_gb": 24}}))
    with pytest.raises(RecipeError, match="unexpected|Extra inputs|gpu"):
        load_recipe(_write(tmp_path / "c.yaml", {**base, "gpu": {"type": "t4", "count": 2}}))
    assert set(GPU_TYPES) >= {"t4", "l4", "a100-80gb", "h100-80gb"}


@pytest.mark.parametrize("name", ["colab-t4", "single-gpu"])
def test_the_one_gpu_recipes_print_their_estimate_offline_then_that_the_model_is_not_available(
    name, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pipeline.main([str(REPO / "params" / f"{name}.yaml"), "--dry-run"]) == 1
    out, err = capsys.readouterr()
    memory = [line for line in out.splitlines() if line.startswith("memory ")]
    assert [line.split(":")[0] for line in memory] == ["memory sft", "memory sft_dpo", "memory clo"]
    assert all(": fits [shapes: the kit's table of published configs]" in line for line in memory)
    assert "the model itself is not available offline" in err and "train.model_id" in err
