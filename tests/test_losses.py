import math

import pytest
import torch

from clo_utils.losses import clo_loss, packed_sequence_logps, response_nll, response_positions, sequence_logps


def _hand_clo(pc, pr, rc, rr, nll, beta, lam):
    terms = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        z = beta * ((a - c) - (b - d))
        terms.append(-math.log(1 / (1 + math.exp(-z))))
    return lam * nll + (1 - lam) * sum(terms) / len(terms)


PC = [-10.0, -22.5, -3.0, -41.0]
PR = [-12.0, -20.0, -9.5, -40.0]
RC = [-11.0, -21.0, -4.0, -42.5]
RR = [-11.5, -21.5, -8.0, -39.0]


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_clo_loss_matches_hand_computation(beta, lam):
    nll = 1.7

    def t(x):
        return torch.tensor(x, dtype=torch.float32)

    loss, metrics = clo_loss(t(PC), t(PR), t(RC), t(RR), torch.tensor(nll), beta=beta, lam=lam)
    assert loss.item() == pytest.approx(_hand_clo(PC, PR, RC, RR, nll, beta, lam), rel=1e-6)
    margins = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(PC, PR, RC, RR)]
    assert metrics["rewards/margins"].item() == pytest.approx(sum(margins) / 4, rel=1e-6)
    assert metrics["rewards/accuracies"].item() == pytest.approx(sum(m > 0 for m in margins) / 4)


def test_clo_loss_per_direction_metrics_and_policy_equals_reference():
    x = torch.tensor([-5.0, -6.0])
    loss, metrics = clo_loss(x, x - 1, x, x - 1, torch.tensor(0.0), beta=0.1, lam=0.0, directions=["en", "tgt"])
    assert loss.item() == pytest.approx(math.log(2))  # policy == reference: every margin is 0
    assert {k for k in metrics if k.startswith("rewards_en/")} == {
        "rewards_en/chosen",
        "rewards_en/rejected",
        "rewards_en/margins",
        "rewards_en/accuracies",
    }
    assert "rewards_tgt/margins" in metrics


def test_clo_loss_is_fp32_for_bf16_inputs():
    def t(x):
        return torch.tensor(x, dtype=torch.bfloat16)

    loss, _ = clo_loss(t(PC), t(PR), t(RC), t(RR), torch.tensor(1.0, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta"),
        ({"lam": -0.1}, r"lam must be in \[0, 1\]"),
        ({"lam": 1.5}, "lam"),
    ],
)
def test_clo_loss_rejects_bad_hyperparameters(kwargs, match):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=match):
        clo_loss(x, x, x, x, torch.tensor(0.0), **kwargs)


def test_sequence_logps_equals_a_hand_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    sums, counts = sequence_logps(logits, labels)
    for b in range(2):
        expected, n = 0.0, 0
        for t in range(1, 5):
            if labels[b, t] != -100:
                expected += torch.log_softmax(logits[b, t - 1].double(), -1)[labels[b, t]].item()
                n += 1
        assert sums[b].item() == pytest.approx(expected, rel=1e-5)
        assert counts[b].item() == n


def test_sequence_logps_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="disagree"):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


LABELS = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100], [-100, -100, -100, -100, -100]])


def test_response_positions_are_the_positions_before_each_label():
    keep = response_positions(LABELS)
    assert keep.tolist() == [[False, True, True, True, False], [True, True, False, False, False], [False] * 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_sequence_logps_equals_full_logits(dtype):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7).to(dtype)
    keep = response_positions(LABELS)
    sums, counts = packed_sequence_logps(logits[keep], LABELS, keep, chunk_tokens=2)  # chunks split rows
    expected_sums, expected_counts = sequence_logps(logits, LABELS)
    assert torch.allclose(sums, expected_sums, atol=1e-5) and sums.dtype == torch.float32
    assert counts.tolist() == expected_counts.tolist() == [3, 2, 0]


def test_packed_sequence_logps_gradient_equals_full_logits():
    torch.manual_seed(1)
    full = torch.randn(3, 5, 7, requires_grad=True)
    keep = response_positions(LABELS)
    packed = full.detach()[keep].requires_grad_()
    sequence_logps(full, LABELS)[0].sum().backward()
    packed_sequence_logps(packed, LABELS, keep)[0].sum().backward()
    assert torch.allclose(packed.grad, full.grad[keep], atol=1e-6)
    assert not full.grad[~keep].any()  # prompt, padding and last positions get no gradient anyway


def test_packed_sequence_logps_rejects_logits_of_the_wrong_positions():
    keep = response_positions(LABELS)
    with pytest.raises(ValueError, match=r"\(N, V\) with N = 5"):
        packed_sequence_logps(torch.zeros(3, 5, 7), LABELS, keep)
    keep[0, -1] = True
    with pytest.raises(ValueError, match="last position"):
        packed_sequence_logps(torch.zeros(6, 7), LABELS, keep)


def test_response_nll_target_only_excludes_english():
    logps = torch.tensor([-100.0, -6.0, -300.0, -4.0])  # en, tgt, en, tgt chosen responses
    counts = torch.tensor([10, 3, 20, 2])
    is_target = torch.tensor([False, True, False, True])
    assert response_nll(logps, counts, is_target, "target").item() == pytest.approx(10.0 / 5)
    assert response_nll(logps, counts, is_target, "both").item() == pytest.approx(410.0 / 35)
    with pytest.raises(ValueError, match="nll_on"):
        response_nll(logps, counts, is_target, "english")
