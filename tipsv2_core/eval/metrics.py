"""Metric functions of the evaluators: segmentation, retrieval, classification, kNN.

Pure functions on numpy arrays (segmentation) or torch tensors (embeddings, scores); none
of them touches a model. Ties are resolved pessimistically everywhere: a candidate that
scores the *same* as the correct one counts as ranked above it, so a collapsed model
(all scores equal) cannot score well by luck of the sort order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tipsv2_core.eval.datasets import IGNORE_INDEX
from tipsv2_core.finite import check_finite

# --------------------------------------------------------------------------- segmentation


def new_confusion(num_classes: int) -> np.ndarray:
    """An empty confusion matrix [C, C] int64 (rows: ground truth, columns: prediction)."""
    return np.zeros((num_classes, num_classes), dtype=np.int64)


def update_confusion(
    conf: np.ndarray, pred: np.ndarray, label: np.ndarray, ignore: int = IGNORE_INDEX
) -> np.ndarray:
    """Adds one image to a confusion matrix, in place, and returns it.

    conf: [C, C] int64, rows = ground truth, columns = prediction.
    pred: [H, W] ints in [0, C); label: [H, W] ints in [0, C) or `ignore`.
    Pixels whose label is `ignore` are skipped. Labels outside [0, C) (other than `ignore`)
    and predictions outside [0, C) raise ValueError: they mean the label map and the class
    list disagree, which a metric should not hide.
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    c = conf.shape[0]
    label = label.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    valid = label != ignore
    label, pred = label[valid], pred[valid]
    if label.size == 0:
        return conf
    if label.min() < 0 or label.max() >= c:
        raise ValueError(f"label values outside [0, {c}) other than ignore={ignore}")
    if pred.min() < 0 or pred.max() >= c:
        raise ValueError(f"predictions outside [0, {c})")
    conf += np.bincount(label * c + pred, minlength=c * c).reshape(c, c)
    return conf


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """conf [C, C] -> IoU [C] float64 = TP / (TP + FP + FN); nan where the union is 0.

    A class with union 0 was neither in the ground truth nor predicted anywhere.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.full(conf.shape[0], np.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    return iou


def miou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """conf [C, C] -> (mean IoU over classes with union > 0, per-class IoU [C] with nan).

    A class predicted somewhere but absent from the ground truth has IoU 0 and counts;
    a class absent from both is nan and does not (mmseg / the official notebook).
    The mean is nan when no class has a union (empty matrix).
    """
    iou = iou_per_class(conf)
    present = ~np.isnan(iou)
    mean = float(iou[present].mean()) if present.any() else float("nan")
    return mean, iou


def pixel_accuracy(conf: np.ndarray) -> float:
    """conf [C, C] -> correctly labelled pixels / labelled pixels (nan if none)."""
    total = conf.sum()
    return float(np.trace(conf) / total) if total > 0 else float("nan")


# ------------------------------------------------------------------------------ retrieval


def i2t_ranks(
    sim: torch.Tensor, text_to_image: torch.Tensor, image_index: torch.Tensor | None = None
) -> torch.Tensor:
    """Image→text rank of each image's best caption: [N] int64 (0 = retrieved first).

    sim: [N, T] similarity of N query images with all T texts.
    text_to_image: [T] int64, the image each text describes.
    image_index: [N] the dataset index of each query row (default 0..N-1), for chunking.
    The rank is the number of *other* images' captions scoring ≥ the image's best caption,
    so an image is within the top K when ANY of its captions is. An image without a
    caption gets rank T (never retrieved).
    """
    n = sim.shape[0]
    if image_index is None:
        image_index = torch.arange(n, device=sim.device)
    positive = text_to_image.to(sim.device)[None, :] == image_index.to(sim.device)[:, None]
    best = sim.masked_fill(~positive, float("-inf")).max(dim=1, keepdim=True).values
    ranks = ((sim >= best) & ~positive).sum(dim=1)
    return torch.where(positive.any(dim=1), ranks, torch.full_like(ranks, sim.shape[1]))


def t2i_ranks(sim: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    """Text→image rank of each caption's own image: [T] int64 (0 = retrieved first).

    sim: [N, T] similarity of all N images with T query texts (a column chunk is fine).
    text_to_image: [T] int64, the image of each of these texts.
    The rank is the number of other images scoring ≥ the caption's own image.
    """
    idx = text_to_image.to(sim.device)
    own = sim.gather(0, idx[None, :])  # [1, T]
    return (sim >= own).sum(dim=0) - 1


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """ranks [Q] (0-based) -> {k: fraction of queries with rank < k}."""
    return {k: float((ranks < k).double().mean()) for k in ks}


def retrieval_recalls(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """L2-normalised image [N, D] and text [T, D] embeddings -> `i2t_r@k`, `t2i_r@k`.

    Similarities are computed in chunks of `chunk` queries, so N×T never sits in memory
    at once.
    """
    check_finite(image_emb, "retrieval image embeddings")
    check_finite(text_emb, "retrieval text embeddings")
    text_to_image = text_to_image.to(image_emb.device)
    i2t = torch.cat(
        [
            i2t_ranks(
                image_emb[s : s + chunk] @ text_emb.T,
                text_to_image,
                torch.arange(s, min(s + chunk, len(image_emb)), device=image_emb.device),
            )
            for s in range(0, len(image_emb), chunk)
        ]
    )
    t2i = torch.cat(
        [
            t2i_ranks(image_emb @ text_emb[s : s + chunk].T, text_to_image[s : s + chunk])
            for s in range(0, len(text_emb), chunk)
        ]
    )
    out = {f"i2t_r@{k}": v for k, v in recall_at_k(i2t, ks).items()}
    out.update({f"t2i_r@{k}": v for k, v in recall_at_k(t2i, ks).items()})
    return out


# ------------------------------------------------------------------------- classification


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """scores [N, C], labels [N] -> {k: fraction whose true class ranks within the top k}.

    The rank of the true class is the number of other classes scoring ≥ it (ties count
    against). With k ≥ C every sample is correct.
    """
    check_finite(scores, "classification scores")
    labels = labels.to(scores.device).long()
    true = scores.gather(1, labels[:, None])
    ranks = (scores >= true).sum(dim=1) - 1
    return {k: float((ranks < k).double().mean()) for k in ks}


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """DINO's weighted kNN classifier: class votes [N_test, C].

    train_features [M, D], train_labels [M] in [0, C), test_features [N, D]; features are
    L2-normalised here, so similarity is cosine. Each test sample takes its k most similar
    training samples (k is clipped to M) and each neighbour votes for its class with weight
    exp(sim / temperature). Feed the votes to `topk_accuracy`.
    """
    check_finite(train_features, "kNN training features")
    check_finite(test_features, "kNN test features")
    train = F.normalize(train_features.float(), dim=-1)
    test = F.normalize(test_features.float(), dim=-1)
    train_labels = train_labels.to(train.device).long()
    k = min(k, train.shape[0])
    votes = []
    for s in range(0, test.shape[0], chunk):
        sim = test[s : s + chunk] @ train.T  # [b, M]
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        v = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        v.scatter_add_(1, train_labels[top_idx], weights)
        votes.append(v)
    if not votes:
        return torch.zeros(0, num_classes, device=train.device)
    return torch.cat(votes)
