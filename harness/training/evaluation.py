"""Evaluation: a split's top-1 and top-5 accuracy (`evaluate`, after every epoch), and the summary a
finished Trainer (harness/training/engine.py) reports: the best-validation and last epochs' accuracies,
cost and size (`Evaluation.summary`)."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from harness.data.data import Batches
from harness.models import count_parameters
from harness.training.device import autocast, peak_memory_mb
from methods import MAIN_PHASE


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, split: str, batch_size: int, amp: str) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of `model` on a split."""
    model.eval()
    hits1 = hits5 = total = 0  # counts stay on the device until the split is done: one host read
    for x, y in batches.eval_batches(split, batch_size):
        with autocast(x.device, amp):
            logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        hits1 = hits1 + hits[:, 0].sum()
        hits5 = hits5 + hits.any(dim=1).sum()
        total += len(y)
    correct1, correct5 = torch.stack([hits1, hits5]).tolist()
    return 100.0 * correct1 / total, 100.0 * correct5 / total


class Evaluation:
    """The Trainer's summary (a part of harness/training/engine.py's Trainer), from its history."""

    def summary(self, wall_seconds: float) -> dict:
        """Summary metrics; the best-validation ones only when validation was evaluated (and was
        not trained on), the test ones only when test was evaluated (never in a sweep trial)."""
        out = {}
        main_epochs = [i for i, h in enumerate(self.history) if self.phases[int(h["phase"])][0] == MAIN_PHASE]
        if "val" in self.eval_splits:
            best = max(main_epochs, key=lambda i: (self.history[i]["val/top1"], -i))
            out |= {"best_val_epoch": best, "val_top1_best": self.history[best]["val/top1"],
                    "val_top1_last": self.history[-1]["val/top1"]}
            if "test" in self.eval_splits:
                out |= {"test_top1_best_val": self.history[best]["test/top1"],
                        "test_top5_best_val": self.history[best]["test/top5"]}
        if "test" in self.eval_splits:
            out |= {"test_top1_last": self.history[-1]["test/top1"], "test_top5_last": self.history[-1]["test/top5"],
                    # test-selected (the best epoch on the test set itself): optimistic, only to stand beside
                    # papers that report it; each maximum on its own, over the main phase
                    "test_top1_max_test": max(self.history[i]["test/top1"] for i in main_epochs),
                    "test_top5_max_test": max(self.history[i]["test/top5"] for i in main_epochs)}
        return out | {
            "mean_epoch_seconds": float(np.mean([h["epoch_seconds"] for h in self.history])),
            "max_load_1m": max(h.get("load_1m", 0.0) for h in self.history),
            "cpu_count": os.cpu_count() or 1,
            "extra_parameters": self.objective.extra_parameters(),
            "student_parameters": count_parameters(self.student),
            "teacher_parameters": sum(count_parameters(t) for t in self.teachers),
            "peak_memory_mb": peak_memory_mb(self.device),
            "wall_seconds": wall_seconds,
        }
