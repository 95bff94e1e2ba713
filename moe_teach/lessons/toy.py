"""A toy task whose input space splits into regions with different rules (lessons 01 and 02).

Inputs are points ``(x1, x2)`` in the square ``[-1, 1]^2``. Each quadrant follows its own
rule, so a model that sends each quadrant to its own expert has an easy job, while one
dense network has to fit four unrelated functions (and the seams between them) at once:

====  ===========================  ==========  ====================================
 id    quadrant                     name        target
====  ===========================  ==========  ====================================
 0     x1 >= 0, x2 >= 0 (top right)  ramp        ``x1 + x2 - 1``
 1     x1 <  0, x2 >= 0 (top left)   wave        ``sin(2 pi x2)``
 2     x1 <  0, x2 <  0 (bottom left) bowl       ``x1^2 + x2^2 - 1``
 3     x1 >= 0, x2 <  0 (bottom right) flat      ``0.5``
====  ===========================  ==========  ====================================

The quadrants are cones around the origin, so a *bias-free* linear gate (the router of
:class:`~moe_teach.MoELayer`) can carve the plane into exactly these regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..validation import (
    check_bool,
    check_float_tensor,
    check_index_tensor,
    check_instance,
    check_module,
    check_positive_float,
    check_positive_int,
    check_seed,
    check_text,
)
from .timing import torch_threads

MAX_POINTS = 10_000_000      # a toy sample; 10**9 points would not fit in memory
MAX_RESOLUTION = 2_000
MAX_STEPS = 100_000


def _ramp(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] + x[:, 1] - 1


def _wave(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * x[:, 1])


def _bowl(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] ** 2 + x[:, 1] ** 2 - 1


def _flat(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x[:, 0], 0.5)


#: ``(name, rule)`` per region id; each rule maps ``[N, 2]`` points to ``[N]`` targets.
TOY_RULES = (("ramp", _ramp), ("wave", _wave), ("bowl", _bowl), ("flat", _flat))
REGION_NAMES = tuple(name for name, _ in TOY_RULES)
NUM_REGIONS = len(TOY_RULES)


@dataclass
class ToyData:
    """A sample of the toy task.

    Attributes:
        x: ``[N, 2]`` float32 points in ``[-1, 1]^2``.
        y: ``[N, 1]`` float32 targets.
        region: ``[N]`` int64 region id (0..3) of each point.
    """

    x: torch.Tensor
    y: torch.Tensor
    region: torch.Tensor

    def __post_init__(self):
        check_float_tensor("x", self.x, last_dim=2)
        check_float_tensor("y", self.y, last_dim=1)
        check_index_tensor("region", self.region, num_rows=self.x.shape[0], dims=1)
        if self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"y must have {self.x.shape[0]} rows (one per point of x), got {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]


def region_of(x: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` points -> ``[N]`` int64 quadrant id (0 top right, counter-clockwise to 3)."""
    check_float_tensor("x", x, last_dim=2)
    right, top = x[:, 0] >= 0, x[:, 1] >= 0
    region = torch.full_like(x[:, 0], 3, dtype=torch.long)   # bottom right
    region[right & top] = 0
    region[~right & top] = 1
    region[~right & ~top] = 2
    return region


def toy_target(x: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` points -> ``[N, 1]`` targets, each point following its own region's rule."""
    region = region_of(x)
    y = torch.zeros_like(x[:, 0])
    for region_id, (_, rule) in enumerate(TOY_RULES):
        inside = region == region_id
        y[inside] = rule(x[inside])
    return y.unsqueeze(1)


def make_toy_data(num_points: int = 2048, seed: int = 0) -> ToyData:
    """``num_points`` uniform points of the toy task; the same ``seed`` gives the same data.

    Uses its own ``torch.Generator``, so it neither reads nor changes the global seed.
    """
    check_positive_int("num_points", num_points, maximum=MAX_POINTS)
    check_seed("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(num_points, 2, generator=generator) * 2 - 1
    return ToyData(x=x, y=toy_target(x), region=region_of(x))


def input_grid(resolution: int = 101) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A regular grid over ``[-1, 1]^2`` for plotting.

    Returns ``(x1 [R, R], x2 [R, R], points [R*R, 2])``; ``points`` row ``i * R + j`` is
    ``(x1[i, j], x2[i, j])``.
    """
    check_positive_int("resolution", resolution, maximum=MAX_RESOLUTION)
    axis = torch.linspace(-1, 1, resolution)
    x2, x1 = torch.meshgrid(axis, axis, indexing="ij")   # rows go along x2 (image convention)
    return x1, x2, torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1)


def train_regression(model: nn.Module, data: ToyData, steps: int = 300, lr: float = 1e-2,
                     progress: bool = True, desc: str = "training", threads: int | None = 1) -> list[float]:
    """Full-batch Adam on the mean squared error of ``model(data.x)`` against ``data.y``.

    ``model`` maps ``[N, 2] -> [N, 1]``. Returns the loss of every step (before its update).
    ``threads``: torch threads while training (``None`` keeps the current setting). The toy
    models are so small that synchronising threads costs more than the arithmetic, and on a
    busy machine several threads can be many times slower than one.
    """
    check_module("model", model)
    check_instance("data", data, ToyData)
    check_positive_int("steps", steps, maximum=MAX_STEPS)
    check_positive_float("lr", lr)
    check_bool("progress", progress)
    check_text("desc", desc)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    with torch_threads(threads):
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=True):
            loss = nn.functional.mse_loss(model(data.x), data.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def mse_by_region(model: nn.Module, data: ToyData) -> torch.Tensor:
    """``[NUM_REGIONS]`` mean squared error of ``model`` on the points of each region."""
    check_module("model", model)
    check_instance("data", data, ToyData)
    squared_error = (model(data.x) - data.y).squeeze(1) ** 2
    return torch.stack([squared_error[data.region == r].mean() for r in range(NUM_REGIONS)])
