"""SentencePiece tokenizer with the official TIPS conventions, without TensorFlow.

Conventions (official `text_encoder.Tokenizer`): text lowercased, no BOS/EOS, pad id 0,
truncated or padded to `max_len` = 64. `paddings` is 1 at pad positions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from tipsv2_core.atomic import atomic_file
from tipsv2_core.models.variants import MAX_TEXT_LEN

PAD_ID = 0
UNK_ID = 1
BATCH_THREADS_FROM = 256  # texts; fewer are encoded one by one in this thread
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lowercase(text: str) -> str:
    """ASCII lowercasing, as `tf.strings.lower` does, so non-ASCII letters are untouched."""
    return text.translate(_ASCII_UPPER)


class Tokenizer:
    """Wraps a SentencePiece `.model` file (the official `tokenizer.model` or one we trained)."""

    def __init__(self, model_path: str | os.PathLike, max_len: int = MAX_TEXT_LEN) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such tokenizer model")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(path.read_bytes())
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
        if self.sp.pad_id() not in (PAD_ID, -1):
            # Pad id 0 is the official convention; a model with another pad id would make
            # real tokens look like padding.
            raise ValueError(f"{path}: pad id is {self.sp.pad_id()}, expected {PAD_ID}")
        self.path = path
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, lowercased, without BOS/EOS, not truncated."""
        lowered = [lowercase(t) for t in texts]
        if len(lowered) < BATCH_THREADS_FROM:
            # SentencePiece encodes a list on a fresh thread pool: ~1 ms of set-up against
            # ~10 µs per caption, and the data loader tokenises two captions per image.
            return [self.sp.EncodeAsIds(t) for t in lowered]
        return self.sp.EncodeAsIds(lowered)

    def __call__(
        self, texts: Sequence[str] | str, pad_to: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenises a batch: (ids [B, L] int64, paddings [B, L] int32, 1 = pad).

        L is `pad_to` (default `max_len`, as the official tokenizer); longer texts are
        truncated to L.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = pad_to or self.max_len
        ids = np.full((len(texts), length), PAD_ID, dtype=np.int64)
        for row, toks in enumerate(self.encode(texts)):
            toks = toks[:length]
            ids[row, : len(toks)] = toks
        return ids, (ids == PAD_ID).astype(np.int32)


def train_tokenizer(
    corpus: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int = 8000,
    model_type: str = "unigram",
) -> Path:
    """Trains a SentencePiece model on a caption corpus for from-scratch runs.

    Ids follow the official layout: 0 = pad, 1 = unk, no BOS/EOS. The vocabulary may
    end up smaller than `vocab_size` on a small corpus (no hard limit). The model file
    appears at `out_path` only once training has succeeded.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "corpus.txt"
        n = 0
        with open(text_file, "w", encoding="utf-8") as f:
            for line in corpus:
                line = " ".join(lowercase(line).split())
                if line:
                    f.write(line + "\n")
                    n += 1
        if n == 0:
            raise ValueError("the tokenizer corpus is empty")
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.Train(
            input=str(text_file),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            hard_vocab_limit=False,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        # Copied into a sibling of `out_path`, then renamed (`atomic_file`): a rename out
        # of the temporary folder fails (EXDEV) where `out_path` lies on another
        # filesystem (a volume mounted into a pod), and a copy straight to `out_path`
        # could leave half a model there.
        with atomic_file(out_path) as staged:
            shutil.copyfile(prefix.with_suffix(".model"), staged)
    return out_path
