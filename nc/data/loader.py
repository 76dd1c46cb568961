"""The loader seam: training, eval passes and snapshot measurement take their batches from a split object.

A split is one of `TensorSplit` (here: the small datasets, standardised float32 images held on the device,
batches are index slices of one tensor, no workers) or `nc.data.store.StoreSplit` (ImageNet at 224 px streamed
from a prepared uint8 store with DataLoader workers and pinned memory). Both offer:

- `len(split)`, `split.labels` (int64 CPU tensor), `split.device`;
- `split.batches(batch_size, order=None)`: (x, y) batches on the device, x float32 (B, C, H, W) standardised,
  y int64, in `order` (a 1-D int64 tensor of row indices; None: the stored order);
- `split.take(indices)`: (x, y) of a few rows (Fig. 1 samples, DeepFool images).
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


class TensorSplit:
    """A split held in memory on the device: x (N, C, H, W) float32, already standardised, and y (N,) int64."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y = x, y
        self._labels = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def labels(self) -> torch.Tensor:
        if self._labels is None:
            self._labels = self.y.cpu()
        return self._labels

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(x, y) batches of `batch_size` rows (the last may be smaller), in `order` or in the stored order."""
        if order is None:
            for i in range(0, len(self), batch_size):
                yield self.x[i:i + batch_size], self.y[i:i + batch_size]
            return
        order = order.to(self.device)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self.x[idx], self.y[idx]

    def take(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64).to(self.device)
        return self.x[idx], self.y[idx]
