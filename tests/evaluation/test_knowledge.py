"""clo_utils.evaluation.knowledge: task names per language, and a real lm-evaluation-harness run offline on a
local multiple-choice task (tests/fixtures/knowledge) with a tiny random model saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clo_utils.common.languages import PAPER_LANGUAGES
from clo_utils.evaluation import knowledge as kn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "knowledge"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


needs_lm_eval = pytest.mark.skipif(
    kn.lm_eval_available() is None,
    reason=f"lm-evaluation-harness is not installed ({kn.LM_EVAL_PIN}, the 'knowledge' extra)",
)


def test_every_paper_language_has_mmmlu_and_belebele_plus_english_retention():
    for lang in PAPER_LANGUAGES:
        tasks = kn.knowledge_tasks(lang)
        assert tasks[:2] == [kn.KNOWLEDGE_TASKS[lang]["mmmlu"], kn.KNOWLEDGE_TASKS[lang]["belebele"]]
        assert tasks[2:] == ["mmlu", "belebele_eng_Latn"]
    assert kn.knowledge_tasks("sw", benchmarks=("global_mmlu",), include_english=False) == ["global_mmlu_sw"]
    with pytest.raises(ValueError, match="no knowledge tasks"):
        kn.knowledge_tasks("xx")


@needs_lm_eval
def test_task_names_exist_in_the_installed_lm_eval():
    # Read the task and group names from lm_eval's YAML files: TaskManager() would index all
    # ~14,000 tasks (10-30 s) to answer the same question.
    import re

    import lm_eval

    declared = re.compile(r"^(?:task|group):\s*['\"]?([\w.-]+)", re.M)
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    known = {
        name
        for folder in ("mmlu", "openai-mmmlu", "global_mmlu", "belebele")
        for path in (tasks_dir / folder).rglob("*.yaml")
        for name in declared.findall(path.read_text(encoding="utf-8", errors="replace"))
    }
    missing = [t for tasks in kn.KNOWLEDGE_TASKS.values() for t in tasks.values() if t not in known]
    assert not missing


def _choice_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenised as lm-evaluation-harness does (whole string encoded,
    the context's tokens split off), summed by hand."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    return sum(torch.log_softmax(logits[t - 1], -1)[whole[t]].item() for t in range(n_context, len(whole)))


@needs_lm_eval
def test_local_multiple_choice_task_runs_offline_and_matches_a_hand_computation(tmp_path, monkeypatch):
    from test_evaluate import save_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")  # proves nothing is fetched
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model_dir = save_tiny_model(tmp_path / "sft-3" / "model", seed=3)
    assert kn.model_path_for_run(tmp_path / "sft-3", "unused") == str(model_dir)

    result = kn.run_knowledge(model_dir, ["clo_tiny_mc"], include_path=FIXTURES, include_defaults=False, batch_size=4)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    items = [json.loads(line) for line in (FIXTURES / "tiny_mc.jsonl").read_text(encoding="utf-8").splitlines()]
    correct = 0
    for item in items:
        context = f"Question: {item['question']}\nAnswer:"
        scores = [_choice_loglikelihood(model, tokenizer, context, " " + choice) for choice in item["choices"]]
        correct += max(range(len(scores)), key=scores.__getitem__) == item["answer"]
    assert result["scores"] == {"clo_tiny_mc": pytest.approx(correct / len(items))}
    assert result["lm_eval"] == kn.lm_eval_available() and result["seconds"] > 0


@needs_lm_eval
def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="knows no task"):
        kn.run_knowledge(tmp_path, ["no_such_task"], include_path=FIXTURES, include_defaults=False)
