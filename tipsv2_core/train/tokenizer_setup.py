"""The run's tokenizer: the configured one, or one trained on the dataset's own captions."""

from __future__ import annotations

import shutil
from pathlib import Path

from tipsv2_core.config import TrainConfig
from tipsv2_core.data.caption_sampling import ALT, LONG, MEDIUM
from tipsv2_core.data.train_dataset import manifest_rows
from tipsv2_core.text.tokenizer import Tokenizer, train_tokenizer

RUN_TOKENIZER = "tokenizer.model"


def ensure_tokenizer(cfg: TrainConfig, out: Path) -> Path:
    """Path of the tokenizer the run uses, stored in `out` so a resume reuses it."""
    target = out / RUN_TOKENIZER
    if target.is_file():
        return target
    if cfg.data.tokenizer:
        src = Path(cfg.data.tokenizer)
        Tokenizer(src)  # validate before copying
        shutil.copyfile(src, target)
        return target
    rows = manifest_rows(cfg.data.path, cfg.data.split)
    corpus = (r[f] for r in rows for f in (ALT, MEDIUM, LONG) if isinstance(r.get(f), str))
    return train_tokenizer(corpus, target, vocab_size=cfg.data.tokenizer_vocab)
