"""The training package behind ``par-train`` and ``par-locate``, one job per module:

    args.py         TrainArgs (each flag's default and help, once) and the command line built from it
    distributed.py  the process group (torchrun / accelerate): set-up, mean over ranks, teardown
    data.py         the windows a stage trains on, the frozen tokenizer's precomputed tokens
    model.py        the model a stage starts from (previous stage, --init, or a preset), adapted to the data
    step.py         the optimiser, autocast, the tokenizer objective and one training step
    checkpoints.py  atomic, resumable checkpoints, random states, the EMA (diffusers' EMAModel)
    validation.py   held-out scores and videos
    loop.py         train(): the stage from set-up to the final EMA model
    locator.py      fit_locator(): par-locate's object locator on the same optimiser, batches and checkpoints
"""
from par_agent.training.args import PREVIOUS, STAGES, TrainArgs, parse_args, parse_overrides
from par_agent.training.loop import train

__all__ = ["PREVIOUS", "STAGES", "TrainArgs", "parse_args", "parse_overrides", "train"]
