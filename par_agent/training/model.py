"""The model a stage starts from: the previous stage's (or ``--init``'s), adapted to the data and the
``--set`` overrides, or a fresh one from a preset."""
from __future__ import annotations

import torch

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.training.args import PREVIOUS, TrainArgs, parse_overrides
from par_agent.training.data import data_tasks


def adapt_model(model: PhysicalAutoregressiveModel, **changes) -> tuple[PhysicalAutoregressiveModel, list[str]]:
    """``model`` rebuilt with ``cfg.replace(**changes)``, keeping every tensor whose shape still
    fits; task-embedding rows follow their task names. Returns the model and the names of the
    tensors that were re-initialised (e.g. the state embedding when ``state_dim`` changes)."""
    old_cfg, new_cfg = model.cfg, model.cfg.replace(**changes)
    if new_cfg == old_cfg:
        return model, []
    new = PhysicalAutoregressiveModel(new_cfg)
    own = new.state_dict()
    reinit = []
    for k, v in model.state_dict().items():
        if k == "task_emb.weight" and own[k].shape[1:] == v.shape[1:]:
            for i, t in enumerate(new_cfg.task_names):
                if t in old_cfg.task_names:
                    own[k][i] = v[old_cfg.task_names.index(t)]
            if not set(new_cfg.task_names) <= set(old_cfg.task_names):
                reinit.append(k)
        elif k in own and own[k].shape == v.shape:
            own[k] = v
        else:
            reinit.append(k)
    new.load_state_dict(own)
    return new, reinit


def build_model(args: TrainArgs) -> tuple[PhysicalAutoregressiveModel, str]:
    """A new model for the stage: from ``--init`` / the previous stage's ``final``, or fresh.

    A model started from a checkpoint takes the data's task names: exactly those for
    ``finetune`` (a single-task model by default, so its policy acts on that task), the
    checkpoint's plus any new ones for the other stages.
    """
    init = args.init
    if init is None and args.stage in PREVIOUS:
        prev = args.out / PREVIOUS[args.stage] / "final"
        if prev.is_dir():
            init = str(prev)
        elif args.stage == "finetune" and (args.out / "tokenizer" / "final").is_dir():
            init = str(args.out / "tokenizer" / "final")
    overrides = parse_overrides(args.overrides)
    if args.cameras and "num_cameras" not in overrides:
        overrides["num_cameras"] = len(args.cameras)
    tasks = data_tasks(args)
    if init is not None:
        model = PhysicalAutoregressiveModel.from_pretrained(init)
        cfg = model.cfg
        if tasks and "task_names" not in overrides:
            overrides["task_names"] = tasks if args.stage == "finetune" else \
                tuple(cfg.task_names) + tuple(t for t in tasks if t not in cfg.task_names)
        if overrides.get("num_cameras", cfg.num_cameras) != cfg.num_cameras and "env_kwargs" not in overrides:
            overrides["env_kwargs"] = {}  # other cameras, another env: fine-tuning records the new one
        model, reinit = adapt_model(model, **overrides)
        note = f"initialised from {init}" + (f" (re-initialised {', '.join(reinit)})" if reinit else "")
        return model, note
    cfg = PARConfig.named(args.preset, **{"task_names": tasks or ("PushCube-v1",), **overrides})
    torch.manual_seed(args.seed)
    return PhysicalAutoregressiveModel(cfg), "initialised from scratch"


def stage_cameras(args: TrainArgs, cfg: PARConfig) -> tuple[str, ...]:
    """The cameras a stage reads, left to right: ``--cameras``, else those the model records, else
    ``base_camera`` for a one-camera model."""
    if args.cameras:
        return tuple(args.cameras)
    if cfg.env_kwargs.get("cameras"):
        return tuple(cfg.env_kwargs["cameras"])
    if cfg.num_cameras == 1:
        return ("base_camera",)
    raise ValueError(f"the model reads {cfg.num_cameras} cameras side by side; name them with --cameras "
                     "(e.g. --cameras base_camera hand_camera)")
