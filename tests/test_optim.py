"""The optimiser: torch's fused AdamW where it runs, with the same updates as the loop."""

from __future__ import annotations

import pytest
import torch

from tests.test_meta_arch import batch, small_cfg
from tipsv2_core.train.meta_arch import TIPSv2MetaArch
from tipsv2_core.train.optim import (
    build_optimizer,
    fused_supported,
    load_optimizer_tensors,
    optimizer_tensors,
    param_groups,
)

pytestmark = pytest.mark.unit


def _train(steps: int, fused: bool = True, resume_at: int | None = None) -> dict:
    """Parameters after `steps` AdamW steps of the demo meta-architecture on fixed batches."""
    torch.manual_seed(0)
    cfg = small_cfg(f"optim.fused={str(fused).lower()}")
    arch = TIPSv2MetaArch(cfg)
    opt = build_optimizer(arch.trainable_modules(), cfg.optim)
    for step in range(steps):
        if step == resume_at:  # the state round-trips through the checkpoint's tensors
            tensors, rest = optimizer_tensors(opt)
            opt = build_optimizer(arch.trainable_modules(), cfg.optim)
            load_optimizer_tensors(opt, tensors, rest)
        loss, _ = arch.training_forward(batch(seed=step), teacher_temp=0.04)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in arch.trainable_modules().named_parameters()}


@pytest.mark.parametrize("fused", [True, False])
def test_cpu_parameters_get_the_fused_kernel_unless_switched_off(fused):
    cfg = small_cfg(f"optim.fused={str(fused).lower()}")
    opt = build_optimizer(TIPSv2MetaArch(cfg).trainable_modules(), cfg.optim)
    assert all(bool(group["fused"]) == fused for group in opt.param_groups)


def test_integer_parameters_fall_back_to_the_loop():
    groups = param_groups(torch.nn.Linear(2, 2))
    assert fused_supported(groups)
    groups[0]["params"].append(torch.zeros(3, dtype=torch.int64))
    assert not fused_supported(groups)
    assert not fused_supported([{"params": []}])


def test_fused_update_equals_the_per_tensor_loop_to_rounding():
    # One step from the same gradients: the updates (~lr = 1e-3 per element) agree to a
    # few float32 ulps. Over later steps such ulps grow, as any reordering of float sums
    # does: elements whose gradient is rounding noise (key biases, invariant under the
    # softmax) get lr-sized Adam steps in a direction the noise picks.
    start = _train(0)
    fused, loop = _train(1), _train(1, fused=False)
    assert fused.keys() == loop.keys()
    for name in fused:
        torch.testing.assert_close(
            fused[name] - start[name], loop[name] - start[name], rtol=1e-4, atol=2e-8, msg=name
        )


def test_fused_state_resumes_exactly():
    straight, resumed = _train(4), _train(4, resume_at=2)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
