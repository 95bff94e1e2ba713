"""Argument checks shared by every public constructor and function.

Each helper raises a ValueError or TypeError whose message names the argument and the
values it accepts, so a learner sees "top_k must be ..." instead of a deep torch traceback.
"""

from __future__ import annotations

from dataclasses import fields

import torch


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int (1, 2, 3, ...), got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (1, 2, 3, ...), got {value}")
    return value


def check_non_negative_int(name: str, value) -> int:
    """Return ``value`` if it is an int >= 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0 (0, 1, 2, ...), got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0, 1, 2, ...), got {value}")
    return value


def check_top_k(top_k, num_experts: int) -> int:
    """``top_k`` must be an int with 1 <= top_k <= num_experts."""
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int between 1 and num_experts={num_experts}, got {top_k!r}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}")
    return top_k


def check_positive_float(name: str, value) -> float:
    """``value`` must be a real number > 0 (ints accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number > 0, got {value!r} of type {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value}")
    return float(value)


def check_non_negative_float(name: str, value) -> float:
    """``value`` must be a real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number >= 0, got {value!r} of type {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value}")
    return float(value)


def check_choice(name: str, value, allowed) -> str:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_float_tensor(name: str, tensor, last_dim: int | None = None, min_dims: int = 1) -> torch.Tensor:
    """``tensor`` must be a floating-point torch.Tensor, optionally with a given last dimension."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, bfloat16, ...), got dtype {tensor.dtype}; "
            f"convert it with {name}.float()"
        )
    if tensor.dim() < min_dims:
        raise ValueError(f"{name} must have at least {min_dims} dimension(s), got shape {tuple(tensor.shape)}")
    if last_dim is not None and tensor.shape[-1] != last_dim:
        raise ValueError(
            f"{name} must have last dimension {last_dim} (shape [..., {last_dim}]), got shape {tuple(tensor.shape)}"
        )
    return tensor


def check_keys(name: str, data, cls) -> dict:
    """``data`` must be a dict with exactly the fields of dataclass ``cls`` (for ``from_dict``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{name} must be a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(data) - names), sorted(names - set(data))
    if unknown or missing:
        raise ValueError(f"{name} keys do not match {cls.__name__}: unknown {unknown}, missing {missing}")
    return data
