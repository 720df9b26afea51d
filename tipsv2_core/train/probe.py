"""Learning curves: zero-shot segmentation and retrieval on held-out data during training.

End-point metrics cannot tell an under-trained model from a broken one; a curve can. When
`run.probe_every` is set, the loop hands the student to a `Probe` every that many steps.
The probe scores it on the first `run.probe_images` samples of the training dataset's
`run.probe_split` split, with the same evaluators and protocol as
`tipsv2 eval` (whole-image zero-shot segmentation at the stage's global size, retrieval
R@1 both ways), and returns rows such as `probe/zeroshot_seg/miou`, which the loop writes
to metrics.jsonl and the tracker sends to MLflow.

The probe changes nothing in training: the model is put back in training mode and the
random number generators' states are restored afterwards, so a run with probes has
bit-identical weights to one without.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from tipsv2_core.config import TrainConfig
from tipsv2_core.eval import retrieval, zeroshot_seg
from tipsv2_core.eval.readers.resolve import open_eval_views
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text.tokenizer import Tokenizer

PREFIX = "probe"


class Probe:
    """Scores a model on a fixed held-out subset; `probe(model) -> {probe/...: value}`."""

    def __init__(self, cfg: TrainConfig, tokenizer: str | Path) -> None:
        run = cfg.run
        views = open_eval_views(cfg.data.path, split=run.probe_split, limit=run.probe_images)
        if views.seg is None or views.captions is None:
            raise ValueError(
                f"run.probe_every: {cfg.data.path} offers no segmentation or caption view "
                f"of split {run.probe_split!r}"
            )
        self.seg, self.captions = views.seg, views.captions
        self.tokenizer = Tokenizer(tokenizer)
        self.image_size = cfg.stages[-1].global_size

    @classmethod
    def for_run(cls, cfg: TrainConfig, tokenizer: str | Path) -> Probe | None:
        """The run's probe, or None when it is off, when the run is shorter than one probe
        interval, or (with a warning) when the data has no labelled `run.probe_split`:
        a dataset without one still trains."""
        every = cfg.run.probe_every
        if not every or every > cfg.total_steps:
            return None
        try:
            return cls(cfg, tokenizer)
        except (ValueError, FileNotFoundError, KeyError) as err:
            warnings.warn(f"learning curves off: {err}", stacklevel=2)
            return None

    @torch.no_grad()
    def __call__(self, model: TIPSModel) -> dict[str, float]:
        rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        was_training = model.training
        try:
            model.eval()
            seg = zeroshot_seg.evaluate(
                model,
                self.tokenizer,
                self.seg,
                mode="whole",
                eval_size=self.image_size,
                progress=False,
            )
            ret = retrieval.evaluate(
                model, self.tokenizer, self.captions, image_size=self.image_size, progress=False
            )
        finally:
            model.train(was_training)
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            random.setstate(rng[2])
        return {
            f"{PREFIX}/zeroshot_seg/miou": seg["miou"],
            f"{PREFIX}/retrieval/i2t_r@1": ret["i2t_r@1"],
            f"{PREFIX}/retrieval/t2i_r@1": ret["t2i_r@1"],
        }
