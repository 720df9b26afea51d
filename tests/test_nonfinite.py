"""Non-finite model outputs are an error everywhere, never a (perfect-looking) number.

A model with NaN weights used to embed to NaN with exit 0, and retrieval reported R@1 = 1
both ways (ranks counted with `>=` are 0 when every comparison is false). Each command and
evaluator now stops with one line naming the output. Also here: `tipsv2 eval --output`
records the version of the data it measured, which the promotion gate compares.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.registry import load_metrics_file
from pipelines.cli import main
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.eval.metrics import knn_scores, retrieval_recalls, topk_accuracy
from tipsv2_core.finite import NonFiniteError
from tipsv2_core.models.io import save_model
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text import train_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonfinite") / "synth"
    return write_synthetic_dataset(out, num_images=40, image_size=112, seed=5, progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory, caption_corpus):
    """(good checkpoint, checkpoint with one NaN weight per tower); a tokenizer beside them."""
    d = tmp_path_factory.mktemp("nonfinite_models")
    train_tokenizer(caption_corpus, d / "tokenizer.model", vocab_size=50)
    torch.manual_seed(0)
    model = TIPSModel("nano14")
    good = save_model(model, d / "good", {"step": 0})
    with torch.no_grad():
        model.vision.patch_embed.proj.weight[0, 0, 0, 0] = float("nan")
        next(model.text.parameters()).view(-1)[0] = float("nan")
    bad = save_model(model, d / "nan", {"step": 0})
    return good, bad


def tipsv2(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.unit
def test_metrics_refuse_nan_instead_of_ranking_it_first():
    nan = torch.full((4, 8), float("nan"))
    ok = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    with pytest.raises(NonFiniteError, match="retrieval image embeddings: 32 of 32"):
        retrieval_recalls(nan, ok, torch.arange(4))
    with pytest.raises(NonFiniteError, match="classification scores"):
        topk_accuracy(torch.tensor([[0.1, float("inf")]]), torch.tensor([0]))
    with pytest.raises(NonFiniteError, match="kNN test features"):
        knn_scores(ok, torch.arange(4), nan, 4)


def test_embed_with_nan_weights_fails_and_writes_nothing(capsys, models, image_files, tmp_path):
    good, bad = models
    out = tmp_path / "emb.npz"
    args = ["embed", "image", "--checkpoint", bad, "--image-size", "112", image_files[0]]
    rc, _, err = tipsv2(capsys, *args, "--output", out)
    assert rc == 2 and "NaN or inf" in err and "image embeddings (cls1)" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    tok = good.parent / "tokenizer.model"
    rc, _, err = tipsv2(
        capsys, "embed", "text", "--checkpoint", bad, "--tokenizer", tok, "a red star",
        "--output", tmp_path / "t.json",
    )  # fmt: skip
    assert rc == 2 and "text embeddings" in err and not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("task", ["retrieval", "zeroshot_seg", "classification", "knn"])
def test_eval_with_nan_weights_fails_naming_the_output(capsys, models, dataset, tmp_path, task):
    _, bad = models
    out = tmp_path / "eval.json"
    rc, stdout, err = tipsv2(
        capsys, "eval", "--checkpoint", bad, "--dataset", dataset, "--tasks", task,
        "--limit", "6", "--eval-size", "112", "--image-size", "112", "--mode", "whole",
        "--split", "train", "--train-split", "train", "--quiet", "--output", out,
    )  # fmt: skip
    assert rc == 2, stdout
    assert "NaN or inf" in err and not out.exists()


def test_eval_output_records_the_eval_data_version(capsys, models, dataset, tmp_path):
    good, _ = models
    files = []
    for i in range(2):  # two models measured on one dataset: the same version
        files.append(tmp_path / f"eval{i}.json")
        rc, stdout, err = tipsv2(
            capsys, "eval", "--checkpoint", good, "--dataset", dataset, "--tasks", "retrieval",
            "--limit", "6", "--image-size", "112", "--split", "train", "--quiet",
            "--output", files[-1],
        )  # fmt: skip
        assert rc == 0, err
        assert "eval_data_version" not in json.loads(stdout)  # stdout: the metrics only
    versions = [load_metrics_file(f)[1]["eval_data_version"] for f in files]
    assert versions[0] == versions[1] and versions[0].startswith("manifest-sha256:")
    metrics, _ = load_metrics_file(files[0])
    assert all(np.isfinite(v) for v in metrics.values())
