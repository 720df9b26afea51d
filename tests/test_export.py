"""ONNX export: graphs, parity with PyTorch, failure handling, runtime wrappers, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.errors import CheckpointError
from tipsv2_core.export import (
    METRIC,
    TOLERANCE,
    ParityError,
    export_model,
    is_onnx_export,
    load_onnx_model,
    verify_export,
)
from tipsv2_core.export.parity import max_abs_diff
from tipsv2_core.export.runtime import META_FILE, read_meta
from tipsv2_core.models.io import save_model
from tipsv2_core.text import Tokenizer, train_tokenizer

SIZES = (112, 224)
TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory, caption_corpus) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(caption_corpus, path, vocab_size=50)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, nano, tokenizer_path):
    """The randomised nano model exported with fp16 and int8 copies, checked at 112 and 224."""
    out = tmp_path_factory.mktemp("export") / "nano_onnx"
    return export_model(
        nano, out, image_sizes=SIZES, fp16=True, int8=True, tokenizer=tokenizer_path
    )


def _pixels(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.unit
@pytest.mark.slow
def test_fp32_export_matches_pytorch_at_two_resolutions(exported):
    report = exported.parity
    assert report.passed and report.tolerance == TOLERANCE
    # Every output of every graph was compared, and really compared: two runtimes never
    # agree bit for bit on a transformer, so a zero would mean nothing was run.
    per_output = exported.max_abs_diff_per_output
    assert set(per_output) == {
        "image_encoder/cls1",
        "image_encoder/cls2",
        "image_encoder/patch_tokens",
        "image_values/values",
        "text_encoder/embedding",
    }
    assert all(0 < d <= TOLERANCE for d in per_output.values()), per_output
    assert exported.max_abs_diff == max(per_output.values())
    cases = {c.case for c in report.cases if c.graph == "image_encoder"}
    for size in SIZES:
        for kind in ("random", "scenes"):
            for b in (1, 8):
                assert f"{kind} b{b} {size}x{size}" in cases
    assert "random b2 112x224" in cases  # height and width are independent axes


@pytest.mark.unit
@pytest.mark.slow
def test_export_directory_is_complete_and_described(exported, tokenizer_path):
    root = exported.path
    assert (root / COMPLETE_FILE).is_file()
    assert not list(root.parent.glob(f".{root.name}.tmp-*"))
    meta = json.loads((root / META_FILE).read_text())
    assert meta["variant"] == "nano14" and meta["opset"] >= 17
    assert meta["image_sizes"] == list(SIZES)
    assert meta["metric"] == METRIC == "export/onnx/max_abs_diff"
    assert meta["metrics"][METRIC] == pytest.approx(exported.max_abs_diff)
    assert meta["parity"]["passed"] is True
    assert meta["parity"]["max_abs_diff"] == pytest.approx(exported.max_abs_diff)
    assert len(meta["parity"]["cases"]) == len(exported.parity.cases)
    assert set(meta["precision_parity"]) == {"fp16", "int8"}
    assert meta["tokenizer"] == "tokenizer.model"
    assert (root / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()
    for precision, files in meta["files"].items():
        for graph, name in files.items():
            onnx.checker.check_model(str(root / name))
            model = onnx.load(str(root / name))
            assert model.opset_import[0].version >= 17, (precision, graph)


@pytest.mark.unit
@pytest.mark.slow
def test_graph_signatures_are_dynamic_and_named(exported):
    root = exported.path

    def signature(name):
        sess = ort.InferenceSession(str(root / name), providers=["CPUExecutionProvider"])
        ins = {i.name: i.shape for i in sess.get_inputs()}
        return ins, {o.name: o.shape for o in sess.get_outputs()}

    ins, outs = signature("image_encoder.onnx")
    assert ins == {"images": ["batch", 3, "height", "width"]}
    assert outs == {
        "cls1": ["batch", 96],
        "cls2": ["batch", 96],
        "patch_tokens": ["batch", "grid_h", "grid_w", 96],
    }
    assert signature("image_values.onnx")[1] == {"values": ["batch", "grid_h", "grid_w", 96]}
    ins, outs = signature("text_encoder.onnx")
    assert ins == {"ids": ["batch", "length"], "paddings": ["batch", "length"]}
    assert outs == {"embedding": ["batch", 96]}


@pytest.mark.unit
@pytest.mark.slow
def test_runtime_wrappers_match_pytorch_on_unseen_shapes(exported, nano):
    """Sizes the parity check never used: batch 3, 154×70 (11×5 patches), text length 5."""
    model = load_onnx_model(exported.path)
    images = _pixels(3, 154, 70)
    with torch.inference_mode():
        want, got = nano.vision(images), model.vision(images)
        for name in ("cls1", "cls2", "patch_tokens"):
            a, b = getattr(got, name), getattr(want, name)
            assert a.shape == b.shape and a.dtype == torch.float32
            assert (a - b).abs().max() <= TOLERANCE
        values = model.vision.forward_values(images)
        assert values.shape == (3, 11, 5, 96)
        assert (values - nano.vision.forward_values(images)).abs().max() <= TOLERANCE
        ids = torch.tensor([[5, 9, 3, 0, 0], [7, 7, 7, 7, 7], [0, 0, 0, 0, 0]])
        pads = (ids == 0).to(torch.int32)
        emb = model.text(ids, pads)
        assert (emb - nano.text(ids, pads)).abs().max() <= TOLERANCE
        # An empty text pools to zeros, not NaN: the case that caught onnxscript's
        # optimiser dropping the pooling epsilon (see tipsv2_core/export/onnx_export.py).
        assert torch.equal(emb[2], torch.zeros(96))
        assert model.temperature.item() == pytest.approx(nano.temperature.item())
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.vision(_pixels(1, 100, 112))


@pytest.mark.unit
@pytest.mark.slow
def test_text_encoder_parity_on_captions_and_edge_rows(exported, nano, tokenizer_path):
    text_cases = [c for c in exported.parity.cases if c.graph == "text_encoder"]
    names = {c.case for c in text_cases}
    # With a tokenizer the real-looking texts are tokenised synthetic captions.
    assert {"captions b8 L64", "random b8 L64", "captions b1 L16", "random b1 L16"} <= names
    assert all(c.diffs["embedding"] <= TOLERANCE for c in text_cases)

    tok = Tokenizer(tokenizer_path)
    ids, pads = tok(["A red circle next to a small cat.", "", "a blue star " * 30])
    model = load_onnx_model(exported.path)
    with torch.inference_mode():
        got = model.encode_text(torch.from_numpy(ids), torch.from_numpy(pads))
        want = nano.encode_text(torch.from_numpy(ids), torch.from_numpy(pads))
    assert max_abs_diff(got.numpy(), want.numpy()) <= TOLERANCE


@pytest.mark.unit
@pytest.mark.slow
def test_perturbed_weight_is_caught_by_the_parity_check(exported, nano, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported.path, broken)
    path = broken / "image_encoder.onnx"
    model = onnx.load(str(path))
    (init,) = [t for t in model.graph.initializer if t.name == "vision.norm.bias"]
    bias = numpy_helper.to_array(init).copy()
    bias[7] += 1e-3  # one channel of the final LayerNorm: every token moves by exactly 1e-3
    init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, str(path))

    with pytest.raises(ParityError) as info:
        verify_export(broken, nano)
    report = info.value.report
    failed = {(g, out) for g, _, out, _ in report.failures()}
    assert failed == {
        ("image_encoder", "cls1"),
        ("image_encoder", "cls2"),
        ("image_encoder", "patch_tokens"),
    }
    for graph, _, _, diff in report.failures():
        assert diff == pytest.approx(1e-3, rel=0.05), graph
    message = str(info.value)
    assert "ONNX parity check failed (fp32)" in message
    assert "image_encoder / random b1 112x112 / cls1: max|Δ| = " in message
    # The untouched graphs still pass.
    assert verify_export(exported.path, nano, image_sizes=(112,), batches=(1,)).passed


@pytest.mark.unit
@pytest.mark.slow
def test_a_failing_export_leaves_nothing_behind(nano, exported, tmp_path):
    fresh = tmp_path / "fresh"
    previous = tmp_path / "previous"
    shutil.copytree(exported.path, previous)
    before = (previous / META_FILE).read_text()
    for out in (fresh, previous):
        # No fp32 export reproduces PyTorch to 1e-12: the check fails for real.
        with pytest.raises(ParityError, match="text_encoder / .* max\\|Δ\\|"):
            export_model(nano, out, graphs=("text_encoder",), tolerance=1e-12)
    assert not fresh.exists()
    assert (previous / META_FILE).read_text() == before  # the old export survives intact
    assert (previous / COMPLETE_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]  # no temporary leftovers


@pytest.mark.unit
@pytest.mark.slow
def test_fp16_and_int8_copies_are_real_and_reported(exported, nano):
    fp16, int8 = exported.precision_parity["fp16"], exported.precision_parity["int8"]
    assert fp16.tolerance is None and fp16.passed is None  # reported, not enforced
    assert exported.max_abs_diff < fp16.max_abs_diff < 0.05
    assert exported.max_abs_diff < int8.max_abs_diff < 1.0
    assert exported.meta["metrics"]["export/onnx/int8/max_abs_diff"] == pytest.approx(
        int8.max_abs_diff
    )
    root = exported.path
    half = onnx.load(str(root / "image_encoder.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    quant = onnx.load(str(root / "image_encoder.int8.onnx"))
    assert sum(n.op_type == "MatMulInteger" for n in quant.graph.node) >= 4 * 4  # 4 blocks
    # A .onnx file as the checkpoint selects its precision; I/O stays float32.
    model = load_onnx_model(root / "image_encoder.int8.onnx")
    images = _pixels(2, 112, 112)
    with torch.inference_mode():
        got = model.vision(images).cls1
        want = nano.vision(images).cls1
    assert got.dtype == torch.float32
    assert 0 < (got - want).abs().max() <= int8.max_abs_diff * 2


@pytest.mark.unit
@pytest.mark.slow
def test_loading_checks_completeness_and_variant(exported, tmp_path, nano):
    assert is_onnx_export(exported.path)
    assert is_onnx_export(exported.path / "text_encoder.onnx")
    native = save_model(nano, tmp_path / "native")
    assert not is_onnx_export(native)
    with pytest.raises(CheckpointError, match="variant 'nano14', not 'ti14'"):
        load_onnx_model(exported.path, variant="ti14")
    partial = tmp_path / "partial"
    shutil.copytree(exported.path, partial)
    (partial / COMPLETE_FILE).unlink()
    with pytest.raises(CheckpointError, match="incomplete ONNX export"):
        read_meta(partial)


# --- the CLI, as a user runs it ---------------------------------------------------------


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([TIPSV2, *args], capture_output=True, text=True, timeout=600)
    if ok:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory, nano, tokenizer_path):
    """A native checkpoint with its tokenizer, and `tipsv2 export` of it."""
    d = tmp_path_factory.mktemp("cli")
    ckpt = save_model(nano, d / "native")
    shutil.copyfile(tokenizer_path, ckpt / "tokenizer.model")
    res = run("export", "--checkpoint", str(ckpt), "--out", str(d / "onnx"), "--image-size", "112")
    return ckpt, d / "onnx", json.loads(res.stdout)


@pytest.mark.integration
@pytest.mark.slow
def test_cli_export_prints_a_summary(cli_export):
    ckpt, onnx_dir, summary = cli_export
    assert summary["passed"] is True and summary["variant"] == "nano14"
    assert 0 < summary["metrics"][METRIC] <= TOLERANCE
    assert summary["files"]["fp32"]["image_values"] == "image_values.onnx"
    meta = read_meta(onnx_dir)
    assert meta["source_checkpoint"] == str(ckpt.resolve())
    assert meta["source_meta"]["variant"] == "nano14"
    assert (onnx_dir / "tokenizer.model").is_file()  # found beside the checkpoint


@pytest.mark.integration
@pytest.mark.slow
def test_cli_embed_with_onnx_matches_native(cli_export, image_files, tmp_path):
    ckpt, onnx_dir, _ = cli_export
    outputs = {}
    for name, source in (
        ("native", ckpt),
        ("onnx", onnx_dir),
        ("file", onnx_dir / "image_encoder.onnx"),
    ):
        out = tmp_path / f"{name}.npz"
        run(
            "embed", "image", "--checkpoint", str(source), "--image-size", "112",
            "--patch-tokens", *image_files, "--output", str(out),
        )  # fmt: skip
        outputs[name] = np.load(out)
    for name in ("onnx", "file"):
        for key in ("cls1", "cls2", "patch_tokens"):
            assert outputs[name][key].shape == outputs["native"][key].shape
            assert max_abs_diff(outputs[name][key], outputs["native"][key]) <= TOLERANCE, key

    texts = ["a red circle", "A GREEN STAR next to a small cat", ""]
    emb = {}
    for name, source in (("native", ckpt), ("onnx", onnx_dir)):
        out = tmp_path / f"text_{name}.json"
        run(
            "embed", "text", "--checkpoint", str(source), "--tokenizer",
            str(onnx_dir / "tokenizer.model"), *texts, "--output", str(out),
        )  # fmt: skip
        emb[name] = np.asarray(json.loads(out.read_text())["text"])
    assert emb["onnx"].shape == (3, 96)
    assert max_abs_diff(emb["onnx"], emb["native"]) <= TOLERANCE


@pytest.mark.integration
@pytest.mark.slow
def test_cli_segment_with_onnx_matches_native(cli_export, image_files, tmp_path):
    ckpt, onnx_dir, _ = cli_export
    shares = {}
    for name, source in (("native", ckpt), ("onnx", onnx_dir)):
        out = tmp_path / f"{name}.png"
        res = run(
            "segment", image_files[2], "--checkpoint", str(source), "--classes",
            "circle,star,cat", "--eval-size", "112", "--out", str(out),
        )  # fmt: skip
        shares[name] = json.loads(res.stdout)["pixel_share"]
        assert out.is_file()
    assert shares["onnx"].keys() == shares["native"].keys()
    for c in shares["native"]:
        assert shares["onnx"][c] == pytest.approx(shares["native"][c], abs=0.01)


@pytest.mark.integration
@pytest.mark.slow
def test_cli_export_parity_failure_exits_1(cli_export, tmp_path):
    ckpt, _, _ = cli_export
    out = tmp_path / "bad"
    res = run(
        "export", "--checkpoint", str(ckpt), "--out", str(out), "--image-size", "112",
        "--no-values", "--tolerance", "1e-12", ok=False,
    )  # fmt: skip
    assert res.returncode == 1
    assert "ONNX parity check failed (fp32)" in res.stderr
    assert not out.exists()


@pytest.mark.integration
@pytest.mark.slow
def test_cli_export_reports_accuracy_per_precision_and_eval_runs_exports(cli_export, tmp_path):
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    ckpt, _, _ = cli_export
    data = write_synthetic_dataset(tmp_path / "synth", 200, 112, seed=2, progress=False)
    out = tmp_path / "onnx8"
    args = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--image-size", "112"]
    args += ["--int8", "--eval-dataset", str(data), "--eval-limit", "8", "--eval-size", "112"]
    accuracy = json.loads(run(*args).stdout)["accuracy"]
    assert accuracy == json.loads((out / "accuracy.json").read_text())
    miou = "eval/zeroshot_seg/synth-val/miou"
    assert 0 <= accuracy[f"native/{miou}"] <= 1
    # fp32 graphs: the same predictions but for near-ties of the argmax (features agree to
    # ~1e-6, and a tie flipped on one pixel of 8 images moves the mIoU by ~1e-6).
    assert abs(accuracy[f"export/fp32/{miou}"]) < 1e-4
    assert f"export/int8/{miou}" in accuracy and "export/int8/eval/retrieval/synth-val/i2t_r@1" in (
        accuracy
    )
    # `tipsv2 eval` runs an export like a checkpoint, with the same numbers in fp32.
    ev = ["eval", "--dataset", str(data), "--tasks", "zeroshot_seg", "--limit", "8", "--quiet"]
    ev += ["--eval-size", "112", "--mode", "whole"]
    native = json.loads(run(*ev, "--checkpoint", str(ckpt)).stdout)
    exported = json.loads(run(*ev, "--checkpoint", str(out)).stdout)
    assert exported[miou] == pytest.approx(native[miou], abs=1e-4)  # argmax near-ties, above
