"""Losses against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from vkd_torchreid import losses as L


def test_cross_entropy_plain_and_smoothed_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pids = torch.tensor([0, 2])
    lse0 = math.log(math.exp(2) + 2)
    lse1 = math.log(math.e + 2)
    plain = (lse0 - 2.0 + lse1 - 0.0) / 2
    assert L.cross_entropy(logits, pids).item() == pytest.approx(plain, rel=1e-6)
    eps = 0.1
    # target (1 - eps) * onehot + eps / C
    row0 = -((1 - eps + eps / 3) * (2 - lse0) + (eps / 3) * (0 - lse0) * 2)
    row1 = -((1 - eps + eps / 3) * (0 - lse1) + (eps / 3) * ((0 - lse1) + (1 - lse1)))
    got = L.cross_entropy(logits, pids, label_smooth=eps).item()
    assert got == pytest.approx((row0 + row1) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="label_smooth"):
        L.cross_entropy(logits, pids, label_smooth=1.5)


def test_pairwise_squared_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    expected = torch.tensor([[0.0, 25.0, 2.0], [25.0, 0.0, 13.0], [2.0, 13.0, 0.0]])
    assert torch.allclose(L.pairwise_squared_distances(x), expected, atol=1e-5)
    y = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(L.pairwise_squared_distances(x, y), torch.tensor([[1.0], [20.0], [1.0]]))


# Points on a line: ids 0 at x=0 and x=1; id 1 at x=3 and x=7.
_EMB = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
_PIDS = torch.tensor([0, 0, 1, 1])
# anchor: (hardest positive, hardest negative)
_HARD = [(1.0, 3.0), (1.0, 2.0), (4.0, 2.0), (4.0, 6.0)]


def test_triplet_soft_margin_by_hand():
    expected = sum(math.log(1 + math.exp(p - n)) for p, n in _HARD) / 4
    assert L.triplet_loss(_EMB, _PIDS, margin="soft").item() == pytest.approx(expected, rel=1e-5)


def test_triplet_hinge_margin_by_hand():
    expected = sum(max(0.0, p - n + 0.3) for p, n in _HARD) / 4
    assert L.triplet_loss(_EMB, _PIDS, margin=0.3).item() == pytest.approx(expected, rel=1e-5)


def test_triplet_gradient_is_finite_for_identical_embeddings():
    emb = torch.zeros(4, 8, requires_grad=True)
    L.triplet_loss(emb, _PIDS).backward()
    assert torch.isfinite(emb.grad).all()


def test_triplet_errors():
    with pytest.raises(ValueError, match="two identities"):
        L.triplet_loss(_EMB, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="margin"):
        L.triplet_loss(_EMB, _PIDS, margin="hard")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_triplet_of_one_identity_is_nan_not_a_silent_zero():
    """On an accelerator the single-identity check would be a host sync: NaN instead, which
    the engines' non-finite check stops."""
    pids = torch.zeros(4, dtype=torch.long, device="cuda")
    for margin in ("soft", 0.3):
        assert torch.isnan(L.triplet_loss(_EMB.cuda(), pids, margin=margin))


def test_kd_loss_by_hand():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0]])
    tau = 2.0
    # teacher probs at tau=2: softmax([1, 0]); student: uniform
    p1 = math.e / (math.e + 1)
    p2 = 1 - p1
    kl = p1 * math.log(p1 / 0.5) + p2 * math.log(p2 / 0.5)
    assert L.kd_loss(s, t, tau=tau).item() == pytest.approx(tau * tau * kl, rel=1e-5)
    # summed over classes, averaged over the batch: two copies give the same value
    assert L.kd_loss(s.repeat(2, 1), t.repeat(2, 1), tau=tau).item() == pytest.approx(
        tau * tau * kl, rel=1e-5)
    assert L.kd_loss(t, t, tau=10.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="tau"):
        L.kd_loss(s, t, tau=0.0)


def test_kd_loss_equals_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    ref = torch.nn.functional.kl_div(torch.log_softmax(s / 10, 1), torch.softmax(t / 10, 1),
                                     reduction="batchmean") * 100
    assert L.kd_loss(s, t, tau=10.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_logits_mse_by_hand():
    s = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[0.0, 0.0]])
    assert L.logits_mse_loss(s, t).item() == pytest.approx(2.5)


def test_distance_preservation_by_hand():
    student = torch.tensor([[0.0], [1.0]])
    teacher = torch.tensor([[0.0], [2.0]])
    # squared distances: student [[0,1],[1,0]], teacher [[0,4],[4,0]]; MSE = (9 + 9) / 4
    assert L.distance_preservation_loss(student, teacher).item() == pytest.approx(0.5 * 4.5)
    assert L.distance_preservation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="batches differ"):
        L.distance_preservation_loss(student, teacher[:1])


def test_distance_preservation_ignores_autocast():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 64, generator=g), torch.randn(6, 64, generator=g)
    ref = L.distance_preservation_loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = L.distance_preservation_loss(s, t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_check_finite_names_the_terms_and_hints_at_a_single_identity():
    from vkd_torchreid.engine.loss_values import NonFiniteLossError, check_finite

    check_finite({"loss": 1.0, "loss_tr": 0.5}, "step 1")
    with pytest.raises(NonFiniteLossError, match=r"loss_tr=nan at step 3; .*single identity"):
        check_finite({"loss": math.nan, "loss_tr": math.nan, "loss_ce": 1.0}, "step 3")
    with pytest.raises(NonFiniteLossError) as err:
        check_finite({"loss": math.inf, "loss_ce": math.inf}, "step 4")
    assert "loss_ce=inf at step 4" in str(err.value) and "identity" not in str(err.value)
