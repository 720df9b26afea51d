"""Every loss against hand-written reference maths, plus the invariants that matter."""

from __future__ import annotations

import math

import pytest
import torch

from tipsv2_core.losses import DINOLoss, clip_loss, cosine_distill_loss, iBOTPatchLoss
from tipsv2_core.losses.dino_cls import sinkhorn_knopp

pytestmark = pytest.mark.unit


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_clip_loss_matches_a_loop_over_pairs():
    torch.manual_seed(0)
    img, txt = _unit(torch.randn(5, 8)), _unit(torch.randn(5, 8))
    tau = torch.tensor(0.07)
    ref = 0.0
    for i in range(5):  # -log softmax of the matching pair, both directions
        s_i2t = [float(img[i] @ txt[j]) / 0.07 for j in range(5)]
        s_t2i = [float(txt[i] @ img[j]) / 0.07 for j in range(5)]
        ref += -(s_i2t[i] - math.log(sum(math.exp(v) for v in s_i2t))) / 10
        ref += -(s_t2i[i] - math.log(sum(math.exp(v) for v in s_t2i))) / 10
    assert float(clip_loss(img, txt, tau)) == pytest.approx(ref, rel=1e-5)


def test_clip_loss_is_symmetric_and_rewards_alignment():
    torch.manual_seed(1)
    img, txt = _unit(torch.randn(6, 16)), _unit(torch.randn(6, 16))
    tau = torch.tensor(0.1)
    assert float(clip_loss(img, txt, tau)) == pytest.approx(
        float(clip_loss(txt, img, tau)), rel=1e-6
    )
    assert float(clip_loss(img, img, tau)) < float(clip_loss(img, txt, tau))


def test_clip_temperature_gets_a_gradient():
    img, txt = _unit(torch.randn(4, 8)), _unit(torch.randn(4, 8))
    tau = torch.tensor(0.07, requires_grad=True)
    clip_loss(img, txt, tau).backward()
    assert tau.grad is not None and tau.grad != 0


def test_dino_loss_matches_reference():
    torch.manual_seed(2)
    loss = DINOLoss(out_dim=7, student_temp=0.1)
    loss.center.copy_(torch.randn(1, 7) * 0.1)
    t_logits, s_logits = torch.randn(3, 7), torch.randn(2, 3, 7)
    probs = loss.teacher_probs(t_logits, teacher_temp=0.04)
    ref_p = torch.exp((t_logits - loss.center) / 0.04)
    ref_p = ref_p / ref_p.sum(-1, keepdim=True)
    torch.testing.assert_close(probs, ref_p)
    ref = 0.0
    for m in range(2):
        for b in range(3):
            log_q = s_logits[m, b] / 0.1 - torch.logsumexp(s_logits[m, b] / 0.1, 0)
            ref += -(ref_p[b] * log_q).sum() / 6
    assert float(loss(s_logits, probs)) == pytest.approx(float(ref), rel=1e-5)


def test_dino_centre_is_an_ema_of_teacher_logits():
    loss = DINOLoss(out_dim=4, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    loss.update_center(logits)
    torch.testing.assert_close(loss.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0, 2.0]]))
    assert "center" in loss.state_dict()  # saved in checkpoints


def test_sinkhorn_balances_prototypes():
    torch.manual_seed(3)
    logits = torch.randn(64, 8) + torch.linspace(0, 2, 8)  # some prototypes favoured
    q = sinkhorn_knopp(logits, teacher_temp=0.5, iterations=50)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.mean(dim=0), torch.full((8,), 1 / 8), atol=1e-3, rtol=0)


def test_ibot_and_ibot_plus_plus_differ_exactly_on_visible_patches():
    torch.manual_seed(4)
    b, n, k = 2, 6, 5
    s = torch.randn(b, n, k)
    t = torch.softmax(torch.randn(b, n, k), -1)
    masks = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    ibot, ibotpp = iBOTPatchLoss(k, "ibot"), iBOTPatchLoss(k, "ibot++")
    ce = ibot.per_patch(s, t)
    # Reference maths, per patch: -Σ_k t log softmax(s / 0.1).
    ref_ce = -(t * torch.log_softmax(s / 0.1, -1)).sum(-1)
    torch.testing.assert_close(ce, ref_ce)
    # iBOT: mean over masked patches per image; iBOT++: uniform mean over all N patches.
    want_ibot = torch.stack([ref_ce[i][masks[i]].mean() for i in range(b)]).mean()
    torch.testing.assert_close(ibot(s, t, masks), want_ibot)
    torch.testing.assert_close(ibotpp(s, t, masks), ref_ce.mean())
    # Changing only visible patches' predictions moves iBOT++ and leaves iBOT unchanged.
    s2 = s.clone()
    s2[~masks] += torch.randn_like(s2[~masks])
    torch.testing.assert_close(ibot(s2, t, masks), ibot(s, t, masks))
    assert not torch.allclose(ibotpp(s2, t, masks), ibotpp(s, t, masks))
    # And changing masked ones moves both.
    s3 = s.clone()
    s3[masks] += 1.0 + torch.randn_like(s3[masks])
    assert not torch.allclose(ibot(s3, t, masks), ibot(s, t, masks))
    with pytest.raises(ValueError, match="unknown patch loss mode"):
        iBOTPatchLoss(k, "mae")


def test_cosine_distill_loss():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert float(cosine_distill_loss(a, b)) == pytest.approx(0.5)  # (0 + 1) / 2
    assert float(cosine_distill_loss(a, b, weights=torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ"):
        cosine_distill_loss(a, b[:1])
