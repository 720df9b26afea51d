"""Evaluation metrics against hand-computed cases (tipsv2_core.eval.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tipsv2_core.eval.metrics import (
    i2t_ranks,
    iou_per_class,
    knn_scores,
    miou,
    new_confusion,
    pixel_accuracy,
    recall_at_k,
    retrieval_recalls,
    t2i_ranks,
    topk_accuracy,
    update_confusion,
)

pytestmark = pytest.mark.unit

# Two rows of a 2×3 image, C = 3; 255 is ignored (its prediction must not count).
LABEL = np.array([[0, 0, 1], [255, 2, 1]])
PRED = np.array([[0, 1, 1], [2, 2, 0]])
# valid (label, pred) pairs: (0,0) (0,1) (1,1) (2,2) (1,0)
CONF = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_confusion_by_hand():
    conf = update_confusion(new_confusion(3), PRED, LABEL)
    np.testing.assert_array_equal(conf, CONF)
    assert conf.dtype == np.int64


def test_miou_and_accuracy_by_hand():
    mean, iou = miou(CONF)
    # class 0: tp 1, union 2 + 2 - 1 = 3; class 1 likewise; class 2: 1/1.
    np.testing.assert_allclose(iou, [1 / 3, 1 / 3, 1.0])
    assert mean == pytest.approx(5 / 9)
    assert pixel_accuracy(CONF) == pytest.approx(3 / 5)


def test_class_absent_from_the_dataset_is_excluded():
    conf = update_confusion(new_confusion(4), PRED, LABEL)  # class 3 never seen
    mean, iou = miou(conf)
    assert math.isnan(iou[3])
    assert mean == pytest.approx(5 / 9)


def test_class_predicted_but_never_labelled_counts_as_zero():
    pred = PRED.copy()
    pred[0, 0] = 3  # a false positive of class 3, which has no ground truth
    conf = update_confusion(new_confusion(4), pred, LABEL)
    mean, iou = miou(conf)
    assert iou[3] == 0.0
    # class 0 loses its only true positive: tp 0 -> IoU 0
    np.testing.assert_allclose(iou, [0.0, 1 / 3, 1.0, 0.0])
    assert mean == pytest.approx((1 / 3 + 1) / 4)


def test_class_absent_from_one_image_but_present_in_another():
    conf = new_confusion(3)
    update_confusion(conf, np.zeros((2, 2), int), np.zeros((2, 2), int))  # only class 0
    update_confusion(conf, np.array([[1, 2]]), np.array([[1, 1]]))  # class 1; 2 predicted
    _, iou = miou(conf)
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.0])
    assert pixel_accuracy(conf) == pytest.approx(5 / 6)


def test_ignored_pixels_are_skipped_whatever_their_prediction():
    label = np.full((3, 3), 255)
    label[1, 1] = 2
    pred = np.full((3, 3), 7)  # out of range, but only where ignored
    pred[1, 1] = 2
    conf = update_confusion(new_confusion(3), pred, label)
    assert conf.sum() == 1 and conf[2, 2] == 1


def test_all_ignored_leaves_the_matrix_empty_and_metrics_nan():
    conf = update_confusion(new_confusion(3), np.zeros((2, 2)), np.full((2, 2), 255))
    assert conf.sum() == 0
    assert math.isnan(miou(conf)[0]) and math.isnan(pixel_accuracy(conf))
    assert np.isnan(iou_per_class(conf)).all()


def test_confusion_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (17, 23))
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 6, label.shape)
    conf = update_confusion(new_confusion(6), pred, label)
    ref = np.zeros((6, 6), int)
    for lab, p in zip(label.ravel(), pred.ravel(), strict=True):
        if lab != 255:
            ref[lab, p] += 1
    np.testing.assert_array_equal(conf, ref)


@pytest.mark.parametrize(
    ("pred", "label", "match"),
    [
        (np.zeros((2, 2)), np.full((2, 2), 3), "label values"),
        (np.full((2, 2), 3), np.zeros((2, 2)), "predictions"),
        (np.zeros((2, 3)), np.zeros((2, 2)), "shape"),
    ],
)
def test_inconsistent_inputs_raise(pred, label, match):
    with pytest.raises(ValueError, match=match):
        update_confusion(new_confusion(3), pred, label)


# Retrieval: 3 images, 5 captions; captions 0,1 -> image 0, 2 -> image 1, 3,4 -> image 2.
SIM = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.2, 0.3],
        [0.8, 0.1, 0.4, 0.6, 0.2],
        [0.1, 0.7, 0.3, 0.2, 0.7],
    ]
)
T2I = torch.tensor([0, 0, 1, 2, 2])


def test_i2t_ranks_by_hand():
    # image 0: best caption 0.9, no other caption above -> 0
    # image 1: its caption 0.4, beaten by 0.8 and 0.6 -> 2
    # image 2: best caption 0.7 ties with caption 1 (image 0's) -> 1 (ties count against)
    assert i2t_ranks(SIM, T2I).tolist() == [0, 2, 1]
    r = recall_at_k(i2t_ranks(SIM, T2I), (1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_i2t_any_caption_counts():
    # image 0's first caption is ranked last, its second first: it is retrieved at 1
    sim = torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.1, 0.9]])
    assert i2t_ranks(sim, torch.tensor([0, 0, 1])).tolist() == [0, 0]


def test_t2i_ranks_by_hand():
    # captions: 0 -> 0; 1: own 0.1 ties image 1 and loses to 0.7 -> 2; 2: 0.4 < 0.5 -> 1;
    # 3: own 0.2 ties image 0 and loses to 0.6 -> 2; 4: 0.7 best -> 0
    assert t2i_ranks(SIM, T2I).tolist() == [0, 2, 1, 2, 0]
    r = recall_at_k(t2i_ranks(SIM, T2I), (1, 2, 3))
    assert r == {1: pytest.approx(2 / 5), 2: pytest.approx(3 / 5), 3: 1.0}


def test_i2t_chunks_with_image_index():
    full = i2t_ranks(SIM, T2I)
    part = i2t_ranks(SIM[1:], T2I, torch.tensor([1, 2]))
    assert part.tolist() == full[1:].tolist()


def test_collapsed_embeddings_retrieve_nothing_at_1():
    sim = torch.ones(4, 8)
    t2i = torch.arange(4).repeat_interleave(2)
    assert recall_at_k(i2t_ranks(sim, t2i), (1,))[1] == 0.0
    assert recall_at_k(t2i_ranks(sim, t2i), (1,))[1] == 0.0


def test_perfect_embeddings_give_recall_1():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    images = q[:10]  # orthonormal rows
    t2i = torch.tensor([i for i in range(10) for _ in range(1 + i % 3)])
    texts = images[t2i]  # every caption embeds exactly as its image
    r = retrieval_recalls(images, texts, t2i, ks=(1, 5, 10), chunk=3)
    assert r == {f"{d}_r@{k}": 1.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}


def test_retrieval_recalls_do_not_depend_on_the_chunk_size():
    gen = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(13, 8, generator=gen), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=-1)
    t2i = torch.randint(0, 13, (30,), generator=gen)
    t2i[:13] = torch.arange(13)
    assert retrieval_recalls(images, texts, t2i, chunk=4) == retrieval_recalls(
        images, texts, t2i, chunk=1000
    )


def test_topk_accuracy_by_hand_with_ties():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.1], [0.9, 0.0, 0.2]])
    labels = torch.tensor([2, 0, 0])
    # ranks of the true class: 1, 1 (tie with class 1 counts against), 0
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc == {1: pytest.approx(1 / 3), 2: 1.0, 5: 1.0}


def test_knn_votes_by_hand():
    s = 1 / math.sqrt(2)
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # not normalised: cosine is used
    votes = knn_scores(train, labels, test, num_classes=3, k=2, temperature=0.07)
    e = math.exp
    expected = torch.tensor([[e(1 / 0.07), e(s / 0.07), 0.0], [0.0, e(1 / 0.07) + e(s / 0.07), 0]])
    torch.testing.assert_close(votes, expected, rtol=1e-5, atol=0)
    assert topk_accuracy(votes, torch.tensor([0, 1]), (1,))[1] == 1.0


def test_knn_weighted_vote_beats_majority():
    # Two far neighbours of class 1 outvoted by one very close neighbour of class 0
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    votes = knn_scores(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.05]]), 2, k=3)
    assert votes.argmax().item() == 0
    # with a huge temperature the weights even out and the majority wins
    votes = knn_scores(
        train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.05]]), 2, k=3, temperature=100.0
    )
    assert votes.argmax().item() == 1


def test_knn_clips_k_and_chunks():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(5, 4, generator=gen), torch.randn(7, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 1, 0])
    a = knn_scores(train, labels, test, 3, k=20, chunk=2)
    b = knn_scores(train, labels, test, 3, k=5, chunk=100)
    torch.testing.assert_close(a, b)
