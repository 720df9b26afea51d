"""The tokenizer step: a SentencePiece model trained on a dataset's captions, as an artifact.

`build_tokenizer` reads the captions (alt-text, medium, long) of one split of a dataset,
trains a model with `tipsv2_core.text.train_tokenizer` (the official conventions: pad 0,
unk 1, no BOS/EOS, lowercased) and writes a versioned artifact into a folder (a path or
s3:// URI):

    tokenizer.model   the SentencePiece model
    tokenizer.json    its sha256 and vocabulary size, and the dataset it came from
                      (URI, name, manifest sha256, split, number of captions)

The artifact holds no timestamps or machine paths, so the same dataset and settings give
byte-identical files (and the same DVC hash). SentencePiece records the training input's
temporary path and the thread count inside the model; `_normalise_model` removes those
fields (they only describe the training run, the tokenizer does not read them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import storage
from components.datasets import is_remote, metadata_dir
from tipsv2_core.data.caption_sampling import ALT, LONG, MEDIUM
from tipsv2_core.data.layout import MANIFEST_FILE, local_path, read_card, read_manifest
from tipsv2_core.data.train_dataset import manifest_rows
from tipsv2_core.text.tokenizer import PAD_ID, UNK_ID, Tokenizer, train_tokenizer

__all__ = ["INFO_FILE", "MODEL_FILE", "TokenizerArtifact", "build_tokenizer"]

MODEL_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"
CAPTION_FIELDS = (ALT, MEDIUM, LONG)
MODEL_TYPE = "unigram"


@dataclass(frozen=True)
class TokenizerArtifact:
    """Where the artifact was written and what `tokenizer.json` says about it."""

    out: str
    sha256: str
    vocab_size: int
    info: dict[str, Any]

    @property
    def model_uri(self) -> str:
        return f"{self.out.rstrip('/')}/{MODEL_FILE}"


# ---------------------------------------------------------------------------------------
# protobuf wire format, just enough to drop fields of the model's TrainerSpec

# ModelProto.trainer_spec = 2; TrainerSpec.input = 1, model_prefix = 2, num_threads = 16
# (sentencepiece_model.proto). The pb2 module of the sentencepiece wheel needs a newer
# protobuf runtime than the lock has, so the message is edited at the wire level.
TRAINER_SPEC = 2
RUN_ONLY_FIELDS = frozenset({1, 2, 16})


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of tag, start of value, end) of each field."""
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value = pos
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, value = _varint(buf, pos)
            pos = value + length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf field")
        yield number, wire, start, value, pos


def _normalise_model(data: bytes) -> bytes:
    """The model without the training run's input path, output prefix and thread count."""
    out = bytearray()
    for number, wire, start, value, end in _fields(data):
        if number == TRAINER_SPEC and wire == 2:
            spec = data[value:end]
            kept = b"".join(
                spec[s:e] for n, _, s, _, e in _fields(spec) if n not in RUN_ONLY_FIELDS
            )
            out += _encode_varint(TRAINER_SPEC << 3 | 2)  # the tag: field 2, length-delimited
            out += _encode_varint(len(kept)) + kept
        else:
            out += data[start:end]
    return bytes(out)


# ---------------------------------------------------------------------------------------


def _captions(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[str]:
    return [r[f] for r in rows for f in fields if isinstance(r.get(f), str) and r[f].strip()]


def _publish(folder: Path, out: str | os.PathLike[str]) -> None:
    """Copies the artifact folder to `out`; a copy that fails (a full or read-only disk)
    removes what it wrote where `out` held nothing before, so no half artifact stays (a
    model without its info, or the other way round)."""
    fresh = not storage.list_files(out)
    try:
        storage.put_directory(folder, out)
    except BaseException:
        if fresh:
            with contextlib.suppress(Exception):
                storage.delete_directory(out)
        raise


def build_tokenizer(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    vocab_size: int = 8000,
    split: str | None = "train",
    fields: Sequence[str] = CAPTION_FIELDS,
) -> TokenizerArtifact:
    """Trains a tokenizer on the captions of `split` (None: all) of the dataset at `data`.

    `data` and `out` are paths, file:// or s3:// URIs; `out` is a folder that receives
    tokenizer.model and tokenizer.json. Training on the train split only keeps the
    evaluation captions unseen, as the training run's own tokenizer does.
    """
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be at least 8, got {vocab_size}")
    unknown = [f for f in fields if f not in CAPTION_FIELDS]
    if unknown:
        raise ValueError(f"unknown caption fields {unknown}; known: {list(CAPTION_FIELDS)}")
    uri = os.fspath(data)
    with metadata_dir(uri) as meta:
        card = read_card(meta)
        manifest_sha = hashlib.sha256((meta / MANIFEST_FILE).read_bytes()).hexdigest()
        if is_remote(uri):
            # Only the metadata was downloaded: the shards stay in the object store.
            rows = [
                r for r in read_manifest(meta).to_pylist() if split is None or r["split"] == split
            ]
        else:
            rows = manifest_rows(local_path(uri), split)  # also checks the shards are there
    if split is not None and split not in card["counts"]:
        raise ValueError(f"{uri}: no split {split!r}; it has {list(card['counts'])}")
    corpus = _captions(rows, fields)
    if not corpus:
        raise ValueError(f"{uri}: no captions in {split or 'any'} split to train on")
    with tempfile.TemporaryDirectory(prefix="tipsv2-tok-") as tmp:
        folder = Path(tmp)
        model = train_tokenizer(corpus, folder / MODEL_FILE, vocab_size=vocab_size)
        model.write_bytes(_normalise_model(model.read_bytes()))
        tok = Tokenizer(model)  # the normalised file must still load
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        info = {
            "artifact": "tokenizer",
            "model": MODEL_FILE,
            "sha256": digest,
            "vocab_size": tok.vocab_size,
            "requested_vocab_size": vocab_size,
            "model_type": MODEL_TYPE,
            "conventions": {
                "lowercase": True,
                "pad_id": PAD_ID,
                "unk_id": UNK_ID,
                "bos_eos": False,
            },
            "dataset": {
                "uri": uri,
                "name": card.get("name"),
                "num_samples": card["num_samples"],
                "manifest_sha256": manifest_sha,
                "split": split,
                "caption_fields": list(fields),
                "num_captions": len(corpus),
            },
        }
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if is_remote(os.fspath(out)):
            from components.settings import configure

            configure()
        _publish(folder, out)
    return TokenizerArtifact(os.fspath(out), digest, tok.vocab_size, info)
