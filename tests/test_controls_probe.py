"""The honest controls (colour-only oracle, random-init encoder) and the learning-curve
probe: what they score on cases with a known answer, and that probing leaves training
bit-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_train import dataset, tiny  # noqa: F401 (the module's shard fixture)
from tipsv2_core.checkpoint import load_checkpoint
from tipsv2_core.eval import colour_oracle
from tipsv2_core.eval.controls import random_init_model
from tipsv2_core.eval.datasets import SegDataset, SegSample
from tipsv2_core.train.runs import pretrain


def _seg(name: str, images: list[np.ndarray], labels: list[np.ndarray]) -> SegDataset:
    samples = [
        SegSample(f"{name}{i}", lambda im=im: Image.fromarray(im), lambda lb=lb: lb)
        for i, (im, lb) in enumerate(zip(images, labels, strict=True))
    ]
    return SegDataset(name, ["a", "b", "c"], samples)


def _scenes(seed: int, colour_tells_class: bool, n: int = 12):
    """Images of 3 classes in 32×32 blocks; colour is either the class's or random."""
    rng = np.random.default_rng(seed)
    palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    images, labels = [], []
    for _ in range(n):
        label = rng.integers(0, 3, size=(4, 4)).repeat(8, 0).repeat(8, 1)
        colour = (
            label
            if colour_tells_class
            else rng.integers(0, 3, size=(4, 4)).repeat(8, 0).repeat(8, 1)
        )
        images.append(palette[colour])
        labels.append(label.astype(np.int64))
    return images, labels


@pytest.mark.unit
def test_colour_oracle_finds_a_colour_leak_and_stays_at_chance_without_one():
    leak = colour_oracle.evaluate(_seg("tr", *_scenes(0, True)), _seg("va", *_scenes(1, True)))
    assert leak["miou"] == pytest.approx(1.0)
    fair = colour_oracle.evaluate(_seg("tr", *_scenes(0, False)), _seg("va", *_scenes(1, False)))
    assert fair["miou"] < 0.5 and fair["pixel_acc"] < 0.5  # chance is 1/3


@pytest.mark.unit
def test_colour_oracle_refuses_different_class_lists():
    a = _seg("tr", *_scenes(0, True))
    b = SegDataset("other", ["x", "y", "z"], a.samples)
    with pytest.raises(ValueError, match="tr and other have different class lists"):
        colour_oracle.evaluate(a, b)


@pytest.mark.unit
def test_random_init_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = random_init_model("nano14", seed=3), random_init_model("nano14", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    c = random_init_model("nano14", seed=4)
    assert not torch.equal(a.vision.patch_embed.proj.weight, c.vision.patch_embed.proj.weight)


@pytest.mark.integration
def test_probe_writes_learning_curves_and_leaves_training_bit_identical(dataset, tmp_path):  # noqa: F811
    plain = pretrain(tiny(dataset, steps=10), tmp_path / "plain", progress=False)
    probed_cfg = tiny(dataset, "run.probe_every=5", "run.probe_images=6", steps=10)
    probed = pretrain(probed_cfg, tmp_path / "probed", progress=False)
    a, _, _ = load_checkpoint(plain.final)
    b, _, _ = load_checkpoint(probed.final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if "probe/zeroshot_seg/miou" in r]
    assert [r["step"] for r in probes] == [5, 10]
    for r in probes:
        assert 0.0 <= r["probe/zeroshot_seg/miou"] <= 1.0
        assert 0.0 <= r["probe/retrieval/i2t_r@1"] <= 1.0
    assert not any("probe/" in k for r in rows if "train/loss" in r for k in r)


@pytest.mark.integration
def test_data_without_the_probe_split_still_trains_with_a_warning(dataset, tmp_path):  # noqa: F811
    cfg = tiny(dataset, "run.probe_every=5", "run.probe_split=nosuch", steps=5)
    with pytest.warns(UserWarning, match="learning curves off: .*nosuch"):
        result = pretrain(cfg, tmp_path / "run", progress=False)
    assert result.steps == 5 and (tmp_path / "run" / "final").is_dir()


@pytest.mark.unit
def test_colour_oracle_stays_at_chance_on_the_dense_world(tmp_path):
    """The default world does not leak its labels through colour: fitted on 300 training
    scenes, the oracle scores well under the 10 % that guessing one class per pixel
    among ten would reach on class-balanced data."""
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset
    from tipsv2_core.eval.readers import shard_eval_datasets

    data = write_synthetic_dataset(tmp_path / "d", 400, 112, seed=5, progress=False)
    train, val = shard_eval_datasets(data, "train").seg, shard_eval_datasets(data, "val").seg
    assert len(val.class_names) == 10  # background is ignored, as in ADE150
    assert colour_oracle.evaluate(train, val)["miou"] < 0.08
