"""The `tipsv2` console script, run as a user would: embed, convert, model, tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference_tips import text_forward, vision_forward
from tipsv2_core.models.official import export_official
from tipsv2_core.text import Tokenizer, train_tokenizer

pytestmark = pytest.mark.integration
TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([TIPSV2, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def release(tmp_path_factory, nano):
    """An official-layout npz pair of the randomised nano model, and a tokenizer."""
    d = tmp_path_factory.mktemp("release")
    export_official(nano, d / "tips_v2_nano_vision.npz", d / "tips_v2_nano_text.npz")
    return d


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory, caption_corpus):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(caption_corpus, path, vocab_size=50)
    return path


def _preprocess(path: str, size: int) -> torch.Tensor:
    # The official script: Resize((S, S)) (bilinear on PIL), ToTensor, Normalize(0, 1).
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)


def test_embed_image_reproduces_the_official_script(release, nano, image_files, tmp_path):
    out = tmp_path / "emb.npz"
    res = run(
        "embed", "image", "--checkpoint", str(release / "tips_v2_nano_vision.npz"),
        "--variant", "nano14", "--image-size", "112", "--patch-tokens", *image_files,
        "--output", str(out),
    )  # fmt: skip
    assert "cls1 (4, 96)" in res.stdout
    got = np.load(out)
    assert list(got["inputs"]) == image_files
    images = torch.stack([_preprocess(p, 112) for p in image_files])
    sd = {k: v.detach() for k, v in nano.vision.state_dict().items()}
    cfg = nano.vision.cfg
    cls1, cls2, patches = vision_forward(
        sd, images, heads=3, input_mean=cfg.input_mean, input_std=cfg.input_std
    )
    for name, ref in (("cls1", cls1), ("cls2", cls2)):
        ref = ref / ref.norm(dim=-1, keepdim=True).clamp_min(1e-3)
        np.testing.assert_allclose(got[name], ref.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got[name], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got["patch_tokens"], patches.numpy(), atol=1e-5)


def test_embed_text_with_a_native_checkpoint(release, nano, tokenizer_path, tmp_path):
    native = tmp_path / "native"
    run("convert", str(release / "tips_v2_nano_text.npz"), str(native))
    out = tmp_path / "t.json"
    texts = ["A Red Circle.", "a blue star in the top left"]
    run(
        "embed", "text", "--checkpoint", str(native), "--tokenizer", str(tokenizer_path),
        *texts, "--output", str(out),
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["inputs"] == texts
    ids, pads = Tokenizer(tokenizer_path)(texts)
    sd = {k: v.detach() for k, v in nano.text.state_dict().items()}
    ref = text_forward(sd, torch.from_numpy(ids), torch.from_numpy(pads), heads=3)
    ref = ref / ref.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    np.testing.assert_allclose(np.array(doc["text"]), ref.numpy(), atol=1e-5)


def test_convert_both_directions_round_trips(release, tmp_path):
    run("convert", str(release / "tips_v2_nano"), str(tmp_path / "native"))
    run("convert", str(tmp_path / "native"), str(tmp_path / "out" / "tips_v2_nano_vision.npz"))
    for tower in ("vision", "text"):
        a = np.load(release / f"tips_v2_nano_{tower}.npz")
        b = np.load(tmp_path / "out" / f"tips_v2_nano_{tower}.npz")
        assert set(a.files) == set(b.files)
        assert all(a[k].tobytes() == b[k].tobytes() for k in a.files)
    info = json.loads(run("model", "info", str(tmp_path / "native")).stdout)
    assert info["variant"] == "nano14" and info["vision_params"] == 572_640
    assert info["meta"]["source"]["vision"] == "tips_v2_nano_vision.npz"


def test_model_init_then_embed(tmp_path, image_files):
    run("model", "init", "--variant", "ti14", "--out", str(tmp_path / "ti"), "--seed", "1")
    run(
        "embed", "image", "--checkpoint", str(tmp_path / "ti"), "--image-size", "224",
        image_files[0], "--output", str(tmp_path / "e.json"),
    )  # fmt: skip
    doc = json.loads((tmp_path / "e.json").read_text())
    assert np.array(doc["cls1"]).shape == (1, 192) and "patch_tokens" not in doc


def test_user_errors_exit_2_with_a_message(release, image_files, tmp_path):
    res = run(
        "embed", "image", "--checkpoint", str(release / "tips_v2_nano_vision.npz"),
        "--variant", "b14", image_files[0], "--output", str(tmp_path / "x.npz"), ok=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert "fits variant nano14" in res.stderr and "Traceback" not in res.stderr
    res = run(
        "embed", "image", "--checkpoint", str(release / "tips_v2_nano_vision.npz"),
        str(tmp_path / "missing.jpg"), "--output", str(tmp_path / "x.npz"), ok=False,
    )  # fmt: skip
    assert res.returncode == 2 and "missing.jpg: cannot read image" in res.stderr
    assert not (tmp_path / "x.npz").exists()


def test_tokenizer_train_and_encode(tmp_path, caption_corpus):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(caption_corpus))
    res = run(
        "tokenizer",
        "train",
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "t.model"),
        "--vocab-size",
        "40",
    )
    assert "pieces" in res.stdout
    line = json.loads(
        run("tokenizer", "encode", "--tokenizer", str(tmp_path / "t.model"), "Red STAR").stdout
    )
    assert (
        line["ids"]
        and 0 not in line["ids"]
        and "".join(line["pieces"]).replace("▁", "") == "redstar"
    )


@pytest.mark.parametrize(
    "args", [[], ["embed"], ["embed", "image"], ["embed", "text"], ["convert"], ["model", "init"]]
)
def test_help_is_available_everywhere(args):
    res = run(*args, "--help")
    assert res.stdout.startswith("usage: tipsv2")
