"""The TIPSv2 meta-architecture: student towers, projection heads, EMA teacher, losses.

    L = w_clip·L_CLIP + α·L_DINO + β·L_iBOT++        (α = 1, β = 2 by default)
        [+ w_pooled·L_CLIP(mean of patch tokens, CLS1's captions), off by default]

With `ema.mode="head_only"` (TIPSv2 §3.4) the teacher encoder *is* the student encoder,
run on the unmasked global crop without gradients; only the heads have an EMA copy.
With `ema.mode="full"` (TIPS) the teacher also keeps an EMA copy of the image encoder.
When L_CLIP uses the unmasked view (default), that one student forward serves both the
contrastive loss (with gradients) and, detached, the head-only teacher — no extra pass.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from tipsv2_core.config import TrainConfig
from tipsv2_core.losses import DINOLoss, clip_loss, iBOTPatchLoss
from tipsv2_core.models.heads import DINOHead
from tipsv2_core.models.text import trim_padding
from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.models.vision import VisionOutput

TEMPERATURE_RANGE = (1e-3, 1.0)  # τ is clamped after each step, as CLIP clamps its scale


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class TIPSv2MetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = TIPSModel(cfg.model.variant, pos_grid=cfg.model.pos_grid)
        with torch.no_grad():
            self.student.temperature.fill_(cfg.model.init_temperature)
        d, h = self.student.vision.embed_dim, cfg.heads
        make_head = lambda: DINOHead(d, h.out_dim, h.hidden_dim, h.bottleneck_dim, h.nlayers)  # noqa: E731
        # A shared head is registered once: safetensors refuses aliased tensors.
        self.heads = nn.ModuleDict(
            {"dino": make_head()} | ({} if h.shared else {"ibot": make_head()})
        )
        self.teacher_heads = _frozen_copy(self.heads)
        self.teacher_vision = _frozen_copy(self.student.vision) if cfg.ema.mode == "full" else None
        lo = cfg.loss
        self.dino_loss = DINOLoss(h.out_dim, lo.student_temp, lo.center_momentum)
        self.ibot_loss = iBOTPatchLoss(h.out_dim, lo.ibot_mode, lo.student_temp, lo.center_momentum)
        self.two_cls = uses_cls2(cfg)

    # -- parameters -------------------------------------------------------------------------

    def trainable_modules(self) -> nn.ModuleDict:
        """What the optimiser updates: both towers, τ, the student heads."""
        return nn.ModuleDict({"student": self.student, "heads": self.heads})

    def ema_pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(teacher tensor, student tensor) pairs that the EMA update touches."""
        yield from zip(self.teacher_heads.parameters(), self.heads.parameters(), strict=True)
        if self.teacher_vision is not None:
            yield from zip(
                self.teacher_vision.parameters(), self.student.vision.parameters(), strict=True
            )

    def parameter_counts(self) -> dict[str, int]:
        """Counts in the paper's sense: vision encoder + heads (text tower reported apart)."""
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        vision, heads, text = n(self.student.vision), n(self.heads), n(self.student.text)
        ema = n(self.teacher_heads) + (
            n(self.teacher_vision) if self.teacher_vision is not None else 0
        )
        return {
            "vision": vision,
            "heads": heads,
            "text": text,
            "trainable": vision + heads + text + 1,
            "ema_copies": ema,
            "vision_and_heads_maintained": vision + heads + ema,
        }

    def _head(self, name: str, teacher: bool = False) -> nn.Module:
        heads = self.teacher_heads if teacher else self.heads
        return heads[name] if name in heads else heads["dino"]

    # -- the step ---------------------------------------------------------------------------

    def training_forward(
        self, batch: dict[str, torch.Tensor], teacher_temp: float, ssl_scale: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward of all losses. batch: global_crops [B,3,G,G], local_crops [B,M,3,L,L],
        masks [B,N] bool, cls1_ids/cls1_pad [B,T] (and cls2_ids/cls2_pad for two CLS).

        ssl_scale multiplies α and β (the self-distillation warm-up).
        Returns (weighted total, {name: detached term}).
        """
        cfg, vision = self.cfg, self.student.vision
        g, masks = batch["global_crops"], batch["masks"]
        b = g.shape[0]

        unmasked: VisionOutput | None = None
        if cfg.loss.clip_view == "unmasked":
            unmasked = vision(g)
        with torch.no_grad():
            if self.teacher_vision is not None:
                teacher = self.teacher_vision(g)
            elif unmasked is not None:  # head-only EMA: reuse the student's unmasked pass
                teacher = VisionOutput(
                    *(t.detach() for t in (unmasked.cls1, unmasked.cls2, unmasked.patch_tokens))
                )
            else:
                teacher = vision(g)
            t_cls = self._head("dino", teacher=True)(teacher.cls1)  # [B, K]
            t_patch = self._head("ibot", teacher=True)(
                teacher.patch_tokens.flatten(1, 2)
            )  # [B, N, K]
            t_cls_p = self.dino_loss.teacher_probs(t_cls, teacher_temp, cfg.loss.centering)
            k = t_patch.shape[-1]
            t_patch_p = self.ibot_loss.teacher_probs(
                t_patch.reshape(-1, k), teacher_temp, cfg.loss.centering
            )
            t_patch_p = t_patch_p.reshape(t_patch.shape)

        masked = vision(g, masks=masks)
        s_patch = self._head("ibot")(masked.patch_tokens.flatten(1, 2))
        losses = {"ibot_loss": self.ibot_loss(s_patch, t_patch_p, masks)}

        locals_ = batch["local_crops"]
        if locals_.shape[1] > 0:
            m = locals_.shape[1]
            loc = vision(locals_.flatten(0, 1))
            s_cls = self._head("dino")(loc.cls1).reshape(b, m, -1).transpose(0, 1)  # [M, B, K]
            losses["dino_loss"] = self.dino_loss(s_cls, t_cls_p)
        else:
            losses["dino_loss"] = torch.zeros((), device=g.device)

        image = unmasked if unmasked is not None else masked
        losses |= clip_terms(
            self.student, image, batch, self.two_cls, pooled=cfg.loss.pooled_clip_weight > 0
        )
        with torch.no_grad():
            self.dino_loss.update_center(t_cls)
            self.ibot_loss.update_center(t_patch.reshape(-1, k))

        w = cfg.loss
        total = w.clip_weight * losses["clip_loss"] + ssl_scale * (
            w.dino_weight * losses["dino_loss"] + w.ibot_weight * losses["ibot_loss"]
        )
        if "clip_pooled_loss" in losses:
            total = total + w.pooled_clip_weight * losses["clip_pooled_loss"]
        return total, {name: v.detach() for name, v in losses.items()}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← m·teacher + (1 − m)·student, for the heads (and the encoder if full)."""
        pairs = list(self.ema_pairs())
        if not pairs:
            return
        teacher, student = zip(*pairs, strict=True)
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)

    @torch.no_grad()
    def after_step(self) -> None:
        self.student.temperature.clamp_(*TEMPERATURE_RANGE)


def clip_terms(
    student: TIPSModel,
    image: VisionOutput,
    batch: dict[str, torch.Tensor],
    two_cls: bool,
    pooled: bool = False,
) -> dict[str, torch.Tensor]:
    """L_CLIP: CLS1 ↔ its captions and (two CLS) CLS2 ↔ its captions, averaged; with
    `pooled`, also `clip_pooled_loss`: the mean of the patch tokens [B, h, w, D] ↔ CLS1's
    captions (not part of `clip_loss`; weighted by loss.pooled_clip_weight)."""
    tau = student.temperature
    # One text pass per caption set, each cut to its longest caption: alt-texts are a few
    # tokens and the long captions fill `text_max_len`, so one pass over both would pay
    # for every alt-text at the long captions' length (demo step 1.11×, bench/text_trim.py).
    sets = ["cls1", "cls2"] if two_cls else ["cls1"]
    texts = [student.text(*trim_padding(batch[f"{s}_ids"], batch[f"{s}_pad"])) for s in sets]
    # Normalised in fp32: the towers' outputs are bf16 under bf16 autocast (no-op in fp32).
    text = l2_normalize(torch.cat(texts).float())
    b = image.cls1.shape[0]
    out = {"clip_cls1_loss": clip_loss(l2_normalize(image.cls1.float()), text[:b], tau)}
    if two_cls:
        out["clip_cls2_loss"] = clip_loss(l2_normalize(image.cls2.float()), text[b:], tau)
        out["clip_loss"] = 0.5 * (out["clip_cls1_loss"] + out["clip_cls2_loss"])
    else:
        out["clip_loss"] = out["clip_cls1_loss"]
    if pooled:
        # A linear pool: each patch's gradient is the caption's direction itself, so the
        # text alignment is written into every patch, not only into what the CLS reads.
        mean = l2_normalize(image.patch_tokens.float().mean((1, 2)))
        out["clip_pooled_loss"] = clip_loss(mean, text[:b], tau)
    return out


def uses_cls2(cfg: TrainConfig) -> bool:
    """Whether the caption strategy contrasts CLS2 too."""
    from tipsv2_core.data.caption_sampling import STRATEGIES

    return STRATEGIES[cfg.data.caption_strategy][1] is not None
