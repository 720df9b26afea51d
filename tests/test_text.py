"""The text encoder: reference numerics, padding and batch invariance; the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference_tips import text_forward
from tipsv2_core.models.text import trim_padding
from tipsv2_core.text import Tokenizer, train_tokenizer

pytestmark = pytest.mark.unit
TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, caption_corpus) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(caption_corpus * 3, path, vocab_size=60)
    return Tokenizer(path)


def _ids(lengths, length, vocab=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), length, dtype=torch.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
    return ids, (ids == 0).to(torch.int32)


def test_matches_reference(nano):
    ids, pads = _ids([5, 12, 1, 16], 16)
    sd = {k: v.detach() for k, v in nano.text.state_dict().items()}
    with torch.no_grad():
        ours = nano.text(ids, pads)
    ref = text_forward(sd, ids, pads, heads=nano.text.cfg.num_heads)
    assert ours.shape == (4, 96)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


def test_padding_does_not_change_the_embedding(nano):
    ids16, pads16 = _ids([7, 3], 16)
    ids64 = torch.nn.functional.pad(ids16, (0, 48))
    pads64 = (ids64 == 0).to(torch.int32)
    with torch.no_grad():
        a, b = nano.text(ids16, pads16), nano.text(ids64, pads64)
    torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_trim_padding_cuts_to_the_longest_text_and_keeps_the_embedding(nano):
    ids, pads = _ids([7, 3, 11], 48)
    short_ids, short_pads = trim_padding(ids, pads)
    assert short_ids.shape == short_pads.shape == (3, 11)
    with torch.no_grad():
        torch.testing.assert_close(
            nano.text(short_ids, short_pads), nano.text(ids, pads), atol=TOL, rtol=0
        )
    # All-empty batch: one column stays, so the encoder still has a sequence to read.
    assert trim_padding(*_ids([0, 0], 8))[0].shape == (2, 1)
    with pytest.raises(ValueError, match=r"ids \(2, 8\), paddings \(2, 7\)"):
        trim_padding(ids[:2, :8], pads[:2, :7])


def test_alone_or_in_a_batch_gives_the_same_embedding(nano):
    ids, pads = _ids([9, 2, 30, 64], 64)
    with torch.no_grad():
        batch = nano.text(ids, pads)
        alone = torch.cat([nano.text(ids[i : i + 1], pads[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, atol=TOL, rtol=0)


def test_content_at_pad_positions_is_ignored(nano):
    ids, pads = _ids([4], 16)
    garbage = ids.clone()
    garbage[0, 4:] = 77  # same paddings, different ids under them
    with torch.no_grad():
        torch.testing.assert_close(nano.text(ids, pads), nano.text(garbage, pads), atol=TOL, rtol=0)


def test_empty_text_gives_zeros_not_nans(nano):
    ids, pads = _ids([0, 3], 8)
    with torch.no_grad():
        out = nano.text(ids, pads)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(96))


def test_sinusoid_positions_match_reference():
    from tests.reference_tips import sinusoid
    from tipsv2_core.models.text import sinusoidal_positions

    for dim in (96, 97):
        torch.testing.assert_close(
            sinusoidal_positions(64, dim)[0], sinusoid(64, dim), atol=1e-5, rtol=0
        )


# --- tokenizer -------------------------------------------------------------------------


def test_tokenizer_conventions(tokenizer):
    ids, pads = tokenizer(["A RED Circle.", "a red circle."])
    assert ids.shape == (2, 64) and ids.dtype == np.int64 and pads.dtype == np.int32
    assert (ids[0] == ids[1]).all()  # lowercased
    n = int((pads[0] == 0).sum())
    assert n > 0 and (ids[0, :n] != 0).all() and (ids[0, n:] == 0).all()
    assert tokenizer.sp.bos_id() == -1 and tokenizer.sp.eos_id() == -1
    assert tokenizer.encode(["a red circle."])[0] == list(ids[0, :n])  # no BOS/EOS added


def test_tokenizer_truncates_and_pads_to_request(tokenizer):
    long = " ".join(["red circle"] * 80)
    ids, pads = tokenizer([long, "star"])
    assert ids.shape == (2, 64) and pads[0].sum() == 0
    ids16, _ = tokenizer(["star"], pad_to=16)
    assert ids16.shape == (1, 16)


def test_lowercasing_is_ascii_only_like_tf_strings_lower():
    from tipsv2_core.text.tokenizer import lowercase

    assert lowercase("ÉCOLE Red") == "École red"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer"):
        Tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(bad)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_tokenizer(["", "  "], tmp_path / "t.model")
    assert not (tmp_path / "t.model").exists()
