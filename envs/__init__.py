"""ManiSkill environments for PAR: ``make_env``, the observation wrappers, the state layout, the
predicted-video recorder and SB3 vec-env helpers."""
from envs.make import (
    DEFAULT_MAX_EPISODE_STEPS,
    control_freq,
    default_max_episode_steps,
    make_env,
    make_vec_env,
    sensor_configs,
)
from envs.maniskill import SUPPORTED_TASKS, capture_only, check_task, gym_make, keep_renderer_warm
from envs.recorder import PredictedVideoWrapper, VideoRecorder
from envs.state import (EXTRA_ORDER, STATE_DIMS, extra_order, flatten_state, state_dim, state_fields, state_keys,
                        task_state_fields)
from envs.wrappers import PARObservationWrapper, SingleEnvNumpyWrapper, stitch_cameras

__all__ = [
    "DEFAULT_MAX_EPISODE_STEPS",
    "EXTRA_ORDER",
    "STATE_DIMS",
    "SUPPORTED_TASKS",
    "PARObservationWrapper",
    "PredictedVideoWrapper",
    "SingleEnvNumpyWrapper",
    "VideoRecorder",
    "capture_only",
    "check_task",
    "control_freq",
    "default_max_episode_steps",
    "extra_order",
    "flatten_state",
    "gym_make",
    "keep_renderer_warm",
    "make_env",
    "make_vec_env",
    "sensor_configs",
    "state_dim",
    "state_fields",
    "state_keys",
    "stitch_cameras",
    "task_state_fields",
]
