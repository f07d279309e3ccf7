"""ManiSkill environments for PAR: ``make_env``, the observation wrappers, the state layout, the
predicted-video recorder and SB3 vec-env helpers."""
from envs.make import (
    DEFAULT_MAX_EPISODE_STEPS,
    SUPPORTED_TASKS,
    control_freq,
    default_max_episode_steps,
    gym_make,
    make_env,
    make_vec_env,
)
from envs.recorder import PredictedVideoWrapper, VideoRecorder
from envs.state import STATE_DIMS, flatten_state, state_dim, state_keys
from envs.wrappers import PARObservationWrapper, SingleEnvNumpyWrapper, stitch_cameras

__all__ = [
    "DEFAULT_MAX_EPISODE_STEPS",
    "STATE_DIMS",
    "SUPPORTED_TASKS",
    "PARObservationWrapper",
    "PredictedVideoWrapper",
    "SingleEnvNumpyWrapper",
    "VideoRecorder",
    "control_freq",
    "default_max_episode_steps",
    "flatten_state",
    "gym_make",
    "make_env",
    "make_vec_env",
    "state_dim",
    "state_keys",
    "stitch_cameras",
]

# Physical-token observations pull in the frame tokenizer (diffusers): import them lazily.
_LAZY = {"PhysicalTokenObservation": "envs.tokens", "make_token_vec_env": "envs.tokens"}
__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
