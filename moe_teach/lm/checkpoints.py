"""Checkpoints: model weights, nested config, tokenizer and ``max_seq_len`` in one file,
loaded with ``weights_only=True``, format-versioned and integrity-checked.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import torch

from ..validation import (
    check_instance,
)
from .model import LanguageModel, LMConfig
from .tokenizer import WordTokenizer

# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "moe-teach-lm/2"  # 2: nested config (LMConfig > BlockConfig > MoEConfig)
CHECKPOINT_FORMAT_PREFIX = "moe-teach-lm/"
CHECKPOINT_KEYS = {"format", "config", "max_seq_len", "tokenizer", "state_dict"}


def check_path(name: str, path) -> Path:
    """``path`` must be a str or a path-like object (``pathlib.Path``)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"{name} must be a file path (a non-empty str or pathlib.Path), got {path!r}")
    return Path(path)


def save_checkpoint(path, model: LanguageModel, tokenizer: WordTokenizer) -> Path:
    """Write model weights, config (a dict), tokenizer (a vocab list) and ``max_seq_len`` to ``path``."""
    check_path("path", path)
    check_instance("model", model, LanguageModel)
    check_instance("tokenizer", tokenizer, WordTokenizer)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "max_seq_len": model.config.max_seq_len,
        "tokenizer": tokenizer.to_dict(),
        "state_dict": model.state_dict(),
    }
    # write next to the target, then rename: a failed write never leaves a half-written checkpoint
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path) -> dict:
    """The checkpoint dict at ``path``, checked; clear errors for a missing, corrupt or foreign file."""
    path = check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    not_ours = f"{path} is not a moe-teach checkpoint (not a file written by torch.save / save_checkpoint)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(not_ours)
    check_zip_integrity(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        # torch raises many types here (UnpicklingError, RuntimeError, ...) and its messages
        # suggest weights_only=False, which would run arbitrary code from the file: never do that
        raise ValueError(
            f"{path} is not a moe-teach checkpoint (a damaged torch file, or one holding Python "
            "objects that safe loading refuses)"
        ) from None
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, str) and found.startswith(CHECKPOINT_FORMAT_PREFIX) and found != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a moe-teach checkpoint of format version {found.removeprefix(CHECKPOINT_FORMAT_PREFIX)}, "
            f"this moe-teach reads version {CHECKPOINT_FORMAT.removeprefix(CHECKPOINT_FORMAT_PREFIX)}; "
            "train it again (moe-teach train, or lesson 07) to write the current format"
        )
    if found != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a moe-teach language-model checkpoint "
            f"(expected a dict with format {CHECKPOINT_FORMAT!r})"
        )
    missing = CHECKPOINT_KEYS - set(data)
    if missing:
        raise ValueError(f"checkpoint {path} lacks the entries {sorted(missing)}")
    return data


def check_zip_integrity(path) -> None:
    """Refuse a checkpoint whose zip records fail their CRC check (bytes changed on disk or in transit)."""
    check_path("path", path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise ValueError(f"{path} is not a moe-teach checkpoint that can be read: a damaged zip archive "
                         f"({error})") from None
    if damaged is not None:
        raise ValueError(f"{path} is not a moe-teach checkpoint that can be trusted: a damaged file, its record "
                         f"{damaged!r} fails its CRC check (changed after it was written); write it again")


def load_checkpoint(path, model: LanguageModel | None = None) -> tuple[LanguageModel, WordTokenizer]:
    """Load ``(model, tokenizer)`` from ``path``.

    Without ``model`` a new one is built from the stored config. With ``model`` its config
    must equal the stored one, otherwise a ValueError names the differing fields.
    """
    data = read_checkpoint(path)
    try:
        config = LMConfig.from_dict(data["config"])
        tokenizer = WordTokenizer.from_dict(data["tokenizer"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {path} has an invalid config or tokenizer: {error}") from None
    if data["max_seq_len"] != config.max_seq_len or len(tokenizer) != config.vocab_size:
        raise ValueError(f"checkpoint {path} is inconsistent: max_seq_len/vocab size do not match its config")
    if model is None:
        model = LanguageModel(config)
    elif not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel or None, got {type(model).__name__}")
    elif model.config != config:
        ours, theirs = _flat(model.config.to_dict()), _flat(config.to_dict())
        diff = ", ".join(
            f"{k}: model {ours.get(k)!r} vs checkpoint {theirs.get(k)!r}"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)
        )
        raise ValueError(f"checkpoint {path} was saved from another configuration ({diff})")
    _load_state(model, data["state_dict"], path)
    model.eval()
    return model, tokenizer


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"block": {"dim": 64}}`` -> ``{"block.dim": 64}``, so a config difference names the field."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_state(model: LanguageModel, state: dict, path) -> None:
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} has no valid state_dict")
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"checkpoint {path} does not fit the model: missing keys {missing}, extra keys {extra}"
        )
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"checkpoint {path} has a state_dict whose entries {not_tensors} are not tensors")
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"checkpoint {path} has tensors of the wrong shape: {wrong}")
    model.load_state_dict(state)
