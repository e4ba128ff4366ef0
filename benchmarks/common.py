"""What the training benchmarks share: fixed batches of the built-in dataset and timed SGD steps."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from hardmine.config import Config
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.sources import resolve_split


def make_batches(cfg: Config, iters: int, batch_size: int, device: torch.device) -> list[Any]:
    """`iters` batches of the configured training set (no augmentation), on `device`."""
    dataset = DetectionDataset(resolve_split(cfg.data, "train"), train=False)
    batches = []
    for start in range(0, iters * batch_size, batch_size):
        images, targets = collate_detection(
            [dataset[i % len(dataset)] for i in range(start, start + batch_size)]
        )
        batches.append(
            (
                [image.to(device) for image in images],
                [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets],
            )
        )
    return batches


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list,
    device: torch.device,
    bf16: bool = False,
) -> float:
    """Seconds for one training step (forward, backward, SGD step) on each batch; the forward under
    bfloat16 autocast if `bf16`."""
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for images, targets in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
