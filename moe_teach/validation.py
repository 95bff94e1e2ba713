"""Argument checks shared by every public constructor and function.

Each helper raises a ValueError or TypeError whose message names the argument and the
values it accepts, so a learner sees "top_k must be ..." instead of a deep torch traceback.
Numbers must be finite, and sizes are bounded (:data:`MAX_INT` by default) so a typo such as
``10**12`` is refused at once instead of running for hours.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from torch import nn

MAX_INT = 2**31 - 1           # default upper bound of an int argument
MAX_SEED = 2**63 - 1          # torch.manual_seed's range
MAX_PARAMETERS = 2**31        # 8 GiB of float32: more than a course model can use on a laptop


def _int_type_error(name: str, value, allowed: str) -> TypeError:
    return TypeError(f"{name} must be {allowed}, got {value!r} of type {type(value).__name__}")


def check_positive_int(name: str, value, maximum: int = MAX_INT) -> int:
    """Return ``value`` if it is an int with ``1 <= value <= maximum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _int_type_error(name, value, "a positive int (1, 2, 3, ...)")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (1, 2, 3, ...), got {value}")
    return _at_most(name, value, maximum)


def check_non_negative_int(name: str, value, maximum: int = MAX_INT) -> int:
    """Return ``value`` if it is an int with ``0 <= value <= maximum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _int_type_error(name, value, "an int >= 0 (0, 1, 2, ...)")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0, 1, 2, ...), got {value}")
    return _at_most(name, value, maximum)


def _at_most(name: str, value: int, maximum: int) -> int:
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}, got {value:,}")
    return value


def check_seed(name: str, value) -> int:
    """A random seed: an int in ``0 .. 2**63 - 1`` (what ``torch.manual_seed`` accepts)."""
    return check_non_negative_int(name, value, maximum=MAX_SEED)


def check_top_k(top_k, num_experts: int) -> int:
    """``top_k`` must be an int with 1 <= top_k <= num_experts."""
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int between 1 and num_experts={num_experts}, got {top_k!r}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}")
    return top_k


def _check_real(name: str, value, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed}, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed} (finite), got {value}")
    return float(value)


def check_positive_float(name: str, value, maximum: float = math.inf) -> float:
    """``value`` must be a finite real number with ``0 < value <= maximum`` (ints accepted)."""
    value = _check_real(name, value, "a number > 0")
    if not 0 < value <= maximum:
        bound = "" if maximum == math.inf else f" and at most {maximum:g}"
        raise ValueError(f"{name} must be a number > 0{bound}, got {value}")
    return value


def check_non_negative_float(name: str, value, maximum: float = math.inf) -> float:
    """``value`` must be a finite real number with ``0 <= value <= maximum``."""
    value = _check_real(name, value, "a number >= 0")
    if not 0 <= value <= maximum:
        bound = "" if maximum == math.inf else f" and at most {maximum:g}"
        raise ValueError(f"{name} must be a number >= 0{bound}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` must be exactly True or False (not 0, 1, ``"yes"`` or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return value


def check_choice(name: str, value, allowed) -> str:
    """``value`` must be one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_text(name: str, value) -> str:
    """``value`` must be a str."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {value!r} of type {type(value).__name__}")
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


def check_dtype_matches(name: str, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``tensor`` must have the dtype of ``module``'s parameters (a float32 layer takes float32 input)."""
    parameter = next(module.parameters(), None)
    if parameter is not None and tensor.dtype != parameter.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but the layer's weights are {parameter.dtype}; "
                        f"convert the input with {name}.to({parameter.dtype}) or the layer with .to({tensor.dtype})")
    return tensor


def check_index_tensor(name: str, tensor, num_rows: int | None = None, dims: int = 2) -> torch.Tensor:
    """``tensor`` must be an int64 tensor with ``dims`` dimensions (and ``num_rows`` rows if given)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64:
        kind = f"dtype {tensor.dtype}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise TypeError(f"{name} must be an int64 (torch.long) tensor, got {kind}")
    if tensor.dim() != dims or (num_rows is not None and tensor.shape[0] != num_rows):
        rows = "tokens" if num_rows is None else num_rows
        shape = f"[{rows}, k]" if dims == 2 else f"[{rows}]"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    return tensor


def check_mask(name: str, mask, shape) -> torch.Tensor:
    """``mask`` must be a bool tensor of exactly ``shape``."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor of shape {tuple(shape)}, got {type(mask).__name__}")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype torch.bool, "
                         f"got shape {tuple(mask.shape)} and dtype {mask.dtype}")
    return mask


def check_module(name: str, value, cls=nn.Module):
    """``value`` must be an instance of ``cls`` (an ``nn.Module`` by default)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
    return value


def check_instance(name: str, value, cls):
    """``value`` must be an instance of ``cls`` (a config dataclass, a record, ...)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {value!r:.60} of type {type(value).__name__}")
    return value


def check_parameter_budget(what: str, count: int) -> int:
    """Refuse a module of more than :data:`MAX_PARAMETERS` parameters before allocating it."""
    if count > MAX_PARAMETERS:
        raise ValueError(f"{what} would hold {count:,} parameters, more than {MAX_PARAMETERS:,} "
                         f"({MAX_PARAMETERS * 4 // 2**30} GiB of float32); choose smaller sizes")
    return count


def check_keys(name: str, data, cls) -> dict:
    """``data`` must be a dict with exactly the fields of dataclass ``cls`` (for ``from_dict``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{name} must be a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(data) - names), sorted(names - set(data))
    if unknown or missing:
        raise ValueError(f"{name} keys do not match {cls.__name__}: unknown {unknown}, missing {missing}")
    return data
