"""Dataset preprocessing a paper prescribes: global contrast normalisation + ZCA whitening.

Goodfellow et al. 2013 (maxout), Romero et al. 2015 (FitNets) and the LPL paper (§V-B, §V-C)
preprocess CIFAR with pylearn2's `GlobalContrastNormalization(scale=55.)` followed by `ZCA()`:

    gcn(x)  = scale * (x - mean(x)) / max(eps, sqrt(mean((x - mean(x))^2)))     per image, all pixels
    zca(x)  = (x - mu) @ W,   W = U diag(1 / sqrt(s + bias)) U^T                 mu, U, s from train

U, s are the eigenvectors and eigenvalues of the training split's covariance after GCN; `bias`
(pylearn2's filter_bias, 0.1) keeps the smallest directions from blowing up. The statistics come
from the training split only (never validation or test), are cached on disk by a fingerprint of
the training images, and their fingerprint is logged with every run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import platformdirs
import torch


GCN_SCALE = 55.0
GCN_EPS = 1e-8
ZCA_BIAS = 0.1


def gcn(images: torch.Tensor, scale: float = GCN_SCALE) -> torch.Tensor:
    """Per-image global contrast normalisation (N x ... -> float32 of the same shape)."""
    x = images.flatten(1).double()
    x = x - x.mean(dim=1, keepdim=True)
    norm = x.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(GCN_EPS)
    return (scale * x / norm).float().view(images.shape)


def zca_fit(x: torch.Tensor, bias: float = ZCA_BIAS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, W) of ZCA whitening fitted on the rows of x (N x d)."""
    x = x.flatten(1).double()
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    w = eigenvectors @ torch.diag(1.0 / (eigenvalues.clamp_min(0) + bias).sqrt()) @ eigenvectors.T
    return mean.float(), w.float()


def zca_apply(images: torch.Tensor, mean: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((images.flatten(1).float() - mean) @ w).view(images.shape)


def cache_dir() -> Path:
    return Path(os.environ.get("KD_HARNESS_CACHE") or platformdirs.user_cache_dir("kd-harness")) / "zca"


def gcn_zca(name: str, train: torch.Tensor, others: list[torch.Tensor]) -> tuple[list[torch.Tensor], str]:
    """GCN + ZCA with statistics from `train` only; returns [train, *others] whitened, and the
    statistics' fingerprint (cached under cache_dir() by the training images' hash)."""
    key = hashlib.sha256(train.contiguous().numpy().tobytes()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{key}-gcn{GCN_SCALE:g}-zca{ZCA_BIAS:g}.pt"
    normalised = gcn(train)
    if path.exists():
        stats = torch.load(path, weights_only=True)
        mean, w = stats["mean"], stats["w"]
    else:
        mean, w = zca_fit(normalised)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"mean": mean, "w": w}, tmp)
        tmp.replace(path)
    fingerprint = hashlib.sha256(w.numpy().tobytes()).hexdigest()[:12]
    whitened = [zca_apply(normalised, mean, w)] + [zca_apply(gcn(x), mean, w) for x in others]
    return whitened, fingerprint
