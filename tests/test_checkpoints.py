"""Official .npz import/export and native checkpoints: round trips, strictness, safety."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from tests.conftest import randomize_
from tipsv2_core.checkpoint import COMPLETE_FILE, load_checkpoint, save_checkpoint
from tipsv2_core.errors import CheckpointError
from tipsv2_core.models.io import load_model, load_native, save_model
from tipsv2_core.models.official import (
    export_official,
    load_official,
    load_text_npz,
    load_vision_npz,
    read_npz,
)
from tipsv2_core.models.tips import TIPSModel

pytestmark = pytest.mark.unit


@pytest.fixture()
def official_pair(tmp_path, nano):
    vision, text = tmp_path / "tips_nano_vision.npz", tmp_path / "tips_nano_text.npz"
    export_official(nano, vision, text)
    return vision, text


def test_export_writes_the_official_layout(official_pair, nano):
    vision, text = official_pair
    v, t = read_npz(vision), read_npz(text)
    assert set(v) == set(nano.vision.state_dict())
    assert set(t) == set(nano.text.state_dict()) | {"temperature"}
    assert all(a.dtype == np.float32 for a in v.values())


def test_npz_round_trip_is_bit_exact(official_pair, tmp_path):
    vision, text = official_pair
    model = load_official(vision, text)
    assert model.variant.name == "nano14"
    export_official(model, tmp_path / "again_vision.npz", tmp_path / "again_text.npz")
    for a, b in ((vision, tmp_path / "again_vision.npz"), (text, tmp_path / "again_text.npz")):
        x, y = read_npz(a), read_npz(b)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
            assert x[k].tobytes() == y[k].tobytes(), k


def test_native_round_trip_through_npz_is_bit_exact(official_pair, tmp_path, nano):
    vision, _ = official_pair
    save_model(load_model(vision), tmp_path / "native")
    back = load_native(tmp_path / "native")
    for k, v in nano.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_temperature_stored_as_1_element_array_keeps_its_shape(official_pair, tmp_path):
    vision, text = official_pair
    arrays = read_npz(text)
    arrays["temperature"] = np.array([0.005], dtype=np.float32)
    np.savez(text, **arrays)
    model = load_official(vision, text)
    assert model.temperature.shape == (1,)
    export_official(model, tmp_path / "o_vision.npz", tmp_path / "o_text.npz")
    assert read_npz(tmp_path / "o_text.npz")["temperature"].shape == (1,)


def test_grid_is_read_from_the_file(tmp_path):
    torch.manual_seed(0)
    v1 = TIPSModel("nano14", pos_grid=16)
    export_official(v1, tmp_path / "v_vision.npz", tmp_path / "v_text.npz")
    assert load_vision_npz(tmp_path / "v_vision.npz").pos_embed.shape == (1, 257, 96)


def test_conv_stem_is_recorded_and_a_checkpoint_from_before_it_still_loads(tmp_path, nano):
    # Our small sizes embed patches with a conv stem (VisionConfig.conv_stem); a checkpoint
    # written before they had one has the linear patch embedding and no "conv_stem" in
    # meta.json, and must load as what it is, natively and from its .npz files.
    images = torch.rand(1, 3, 112, 112)
    path = save_model(nano, tmp_path / "stem")
    assert json.loads((path / "meta.json").read_text())["conv_stem"] == 48
    assert load_native(path).vision.cfg.conv_stem == 48
    torch.manual_seed(0)
    old = randomize_(TIPSModel("nano14", conv_stem=0)).eval()
    path = save_model(old, tmp_path / "old")
    meta = json.loads((path / "meta.json").read_text())
    del meta["conv_stem"]
    (path / "meta.json").write_text(json.dumps(meta))
    export_official(old, tmp_path / "old_vision.npz", tmp_path / "old_text.npz")
    npz = load_official(tmp_path / "old_vision.npz", tmp_path / "old_text.npz")
    for back in (load_native(path), npz):
        assert back.variant.name == "nano14" and back.vision.cfg.conv_stem == 0
        assert "patch_embed.stem.0.weight" not in back.vision.state_dict()
        with torch.no_grad():
            torch.testing.assert_close(
                back.eval().vision(images).cls1, old.vision(images).cls1, rtol=0, atol=0
            )


def test_loaded_model_gives_the_same_outputs(official_pair, nano):
    model = load_official(*official_pair).eval()
    images = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(
            model.vision(images).cls2, nano.vision(images).cls2, rtol=0, atol=0
        )


def _edit(path, fn):
    arrays = read_npz(path)
    fn(arrays)
    np.savez(path, **arrays)


def test_missing_key_is_named_with_its_shape(official_pair):
    vision, _ = official_pair
    _edit(vision, lambda a: a.pop("blocks.2.attn.qkv.weight"))
    with pytest.raises(CheckpointError) as e:
        load_vision_npz(vision, "nano14")
    msg = str(e.value)
    assert "missing key 'blocks.2.attn.qkv.weight' (expected shape (288, 96))" in msg
    assert str(vision) in msg


def test_unexpected_key_is_named(official_pair):
    _, text = official_pair
    _edit(text, lambda a: a.__setitem__("extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra.weight' \(shape \(3,\)\)"):
        load_text_npz(text, "nano14")


def test_misshaped_key_names_both_shapes(official_pair):
    vision, _ = official_pair
    _edit(vision, lambda a: a.__setitem__("norm.weight", np.zeros(95, np.float32)))
    with pytest.raises(CheckpointError, match=r"'norm.weight' has shape \(95,\), expected \(96,\)"):
        load_vision_npz(vision, "nano14")


def test_wrong_variant_names_the_variant_that_fits(official_pair):
    vision, text = official_pair
    with pytest.raises(CheckpointError, match="fits variant nano14: pass --variant nano14"):
        load_vision_npz(vision, "b14")
    with pytest.raises(
        CheckpointError, match="(?s)does not fit the ti14 text tower.*fits variant nano14"
    ):
        load_text_npz(text, "ti14")


def test_file_that_fits_nothing(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, foo=np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="fits no known variant"):
        load_vision_npz(path)


def test_truncated_npz_is_a_clear_error(official_pair):
    vision, _ = official_pair
    data = vision.read_bytes()
    vision.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_vision_npz(vision)


def test_object_array_npz_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="refused to load.*never executed"):
        read_npz(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    raw = tmp_path / "evil.npz"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        read_npz(raw)
    # The same payload inside a zip member posing as an array.
    zipped = tmp_path / "evil_zip.npz"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("pos_embed.npy", pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        read_npz(zipped)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_npz(tmp_path / "nope.npz")


# --- native checkpoints ------------------------------------------------------------------


def test_native_checkpoint_layout_and_meta(tmp_path, nano):
    path = save_model(nano, tmp_path / "ckpt", {"step": 7, "data_version": "abc"})
    assert sorted(p.name for p in path.iterdir()) == [
        COMPLETE_FILE,
        "meta.json",
        "model.safetensors",
    ]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 7 and meta["variant"] == "nano14" and meta["data_version"] == "abc"
    assert meta["format_version"] == 1 and "created_at" in meta and "git_sha" in meta
    assert not list(tmp_path.glob(".ckpt*"))  # no temporary leftovers


def test_training_state_is_kept(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"step": 1}, {"opt.m": torch.zeros(3)})
    _, meta, state = load_checkpoint(tmp_path / "c", with_state=True)
    assert torch.equal(state["opt.m"], torch.zeros(3)) and meta["step"] == 1


def test_incomplete_checkpoint_is_never_loaded(tmp_path, nano):
    path = save_model(nano, tmp_path / "ckpt")
    (path / COMPLETE_FILE).unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_native(path)


def test_overwrite_replaces_atomically(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"step": 1})
    save_checkpoint(tmp_path / "c", {"w": torch.full((2,), 2.0)}, {"step": 2})
    model, meta, _ = load_checkpoint(tmp_path / "c")
    assert meta["step"] == 2 and torch.equal(model["w"], torch.full((2,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"step": 1})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"step": object()})  # not JSON
    _, meta, _ = load_checkpoint(tmp_path / "c")
    assert meta["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["c"]


def test_corrupt_safetensors_is_a_clear_error(tmp_path, nano):
    path = save_model(nano, tmp_path / "ckpt")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated"):
        load_native(path)


def test_native_variant_mismatch(tmp_path, nano):
    path = save_model(nano, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="holds variant 'nano14', not 'b14'"):
        load_native(path, "b14")


def test_random_init_is_reproducible():
    torch.manual_seed(3)
    a = TIPSModel("nano14")
    torch.manual_seed(3)
    b = TIPSModel("nano14")
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    randomize_(b)
    assert not torch.equal(a.vision.pos_embed, b.vision.pos_embed)
