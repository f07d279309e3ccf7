"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (backbone, heads, frame
tokenizer and normalisation statistics in one file), with a policy's object locator, if it has
one, in ``locator/`` (its own ``config.json`` + ``model.safetensors``), and name resolution:

1. a built-in name (``par-pushcube``) -> a folder shipped in ``par_agent/pretrained/``;
2. an existing local folder;
3. anything else -> a Hugging Face Hub repo id, through ``huggingface_hub.snapshot_download``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from par_agent.atomic import atomic_file
from par_agent.config import PARConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LOCATOR_DIR = "locator"  # a policy's state estimator, beside the model: its own config.json + model.safetensors
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class CheckpointError(ValueError):
    """A checkpoint folder is missing files or holds bad ones."""


VIDEO_STAGES = ("tokenizer", "pretrain-video")  # par-train stages whose models cannot act yet


def builtin_names() -> list[str]:
    """Every checkpoint shipped in ``par_agent/pretrained/``: the policies and the video models."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CONFIG_NAME).is_file())


def builtin_policies() -> list[str]:
    """The shipped checkpoints that act (fine-tuned with actions), without the video models."""
    return [n for n in builtin_names() if checkpoint_extra(PRETRAINED_DIR / n).get("stage") not in VIDEO_STAGES]


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """Folder holding the checkpoint named by ``name_or_path`` (see module docstring)."""
    s = str(name_or_path)
    if s in builtin_names():
        return PRETRAINED_DIR / s
    p = Path(s).expanduser()
    if p.is_dir():
        return p
    if s.startswith("par-") and "/" not in s:
        raise FileNotFoundError(f"unknown built-in checkpoint {s!r}; built-in names: {builtin_names() or 'none shipped'}")
    if p.exists() or s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise FileNotFoundError(f"checkpoint folder {s!r} does not exist (and it is not a Hugging Face Hub id 'owner/name')")
    return _download(s, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{LOCATOR_DIR}/*"]))
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo_id!r} is not a built-in name ({builtin_names()}) or a local folder, and the Hugging Face Hub "
            f"could not be reached (offline?) nor is it in the local hub cache"
        ) from e
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise FileNotFoundError(f"{repo_id!r} is not a built-in name, a local folder or a Hugging Face Hub repo: {e}") from e


def save_module(module: torch.nn.Module, config: dict, folder: str | os.PathLike, extra: dict | None = None,
                dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` (``config``) and ``model.safetensors`` (``module``'s state dict) into
    ``folder``, each atomically (temp file + rename). ``dtype`` (e.g. ``torch.float16``) stores
    floating weights smaller; loading casts back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    meta = {"format": "pt", "par_agent": "1"}
    if extra:
        meta["extra"] = json.dumps(extra)
    with atomic_file(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata=meta)
    with atomic_file(folder / CONFIG_NAME) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def save_checkpoint(model: torch.nn.Module, cfg: PARConfig, folder: str | os.PathLike,
                    extra: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """A PAR model's folder: :func:`save_module` with its :class:`PARConfig`."""
    return save_module(model, cfg.to_dict(), folder, extra=extra, dtype=dtype)


def read_module(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """The config dict, weights and extra metadata :func:`save_module` wrote, with errors naming the bad file."""
    folder = Path(folder)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint folder {folder} is missing {', '.join(missing)}")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"bad {folder / CONFIG_NAME}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"bad {folder / CONFIG_NAME}: expected a JSON object, got {type(config).__name__}")
    try:
        with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:  # one read: tensors and metadata
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"corrupt weights file {folder / WEIGHTS_NAME}: {e}") from e
    extra = json.loads(meta["extra"]) if "extra" in meta else {}
    return config, state, extra


# config fields that checkpoints of par-agent 0.1 record and this version dropped with the experiments
# behind them: at these neutral values they are read past, any other value is refused by name
RETIRED_FIELDS = {"value_head_width": 0, "best_of": 1, "perception_targets": [], "perception_dim": 0,
                  "perception_loss_weight": 1.0}


def config_from_saved(d: dict) -> PARConfig:
    """A :class:`PARConfig` from a saved config dict, written by this or an earlier version."""
    if d.get("locator"):
        raise ValueError("this config holds an object locator inside the model (par-agent 0.1's layout); load its "
                         "checkpoint folder with PARPolicy.from_pretrained, which gives the locator to the policy")
    d = {k: v for k, v in d.items() if k != "locator"}
    used = sorted(k for k, v in d.items() if k in RETIRED_FIELDS and v != RETIRED_FIELDS[k])
    if used:
        raise ValueError(f"this checkpoint uses {used}, experiment options that par-agent no longer has "
                         "(their results were negative; docs/RESULTS.md): load it with par-agent 0.1")
    return PARConfig.from_dict({k: v for k, v in d.items() if k not in RETIRED_FIELDS})


def checkpoint_extra(folder: str | os.PathLike) -> dict:
    """The ``extra`` metadata a checkpoint's weights file records (``par-train``'s final models:
    ``{"stage": ..., "step": ...}``), read without the weights; {} when there is none."""
    path = Path(folder) / WEIGHTS_NAME
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"corrupt weights file {path}: {e}") from e
    return json.loads(meta["extra"]) if "extra" in meta else {}


def split_legacy_locator(config: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict | None, dict]:
    """par-agent 0.1 kept an object locator inside the model (``config["locator"]``, weights under
    ``locator.``) and set the model's ``obs_mode`` to the plain ``"rgb"``. Returns the model's config
    and weights without it (the model itself reads the full state: ``"rgb+state_dict"``), and the
    locator's config and weights (None and {} when there is none)."""
    loc = config.get("locator") or None
    config = {k: v for k, v in config.items() if k != "locator"}
    if loc is None:
        return config, state, None, {}
    if "env_kwargs" in config:
        config["env_kwargs"] = {**config["env_kwargs"], "obs_mode": "rgb+state_dict"}
    own = {k: v for k, v in state.items() if not k.startswith("locator.")}
    return config, own, loc, {k[len("locator."):]: v for k, v in state.items() if k.startswith("locator.")}


def read_checkpoint(folder: str | os.PathLike) -> tuple[PARConfig, dict[str, torch.Tensor], dict]:
    """A PAR model's config, weights and extra metadata (an older version's object locator left out:
    :func:`split_legacy_locator`), with errors naming the bad file."""
    folder = Path(folder)
    config, state, extra = read_module(folder)
    config, state, _, _ = split_legacy_locator(config, state)
    try:
        cfg = config_from_saved(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"bad {folder / CONFIG_NAME}: {e}") from e
    return cfg, state, extra


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load weights strictly, casting to the model's dtypes; errors name the missing/unexpected keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {source} do not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"weights in {source}: {k} has shape {tuple(state[k].shape)}, model expects {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
