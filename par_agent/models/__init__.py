from par_agent.models.masks import BlockSpec, Kind, ik_attention_mask, window_layout, window_mask
from par_agent.models.par import InferenceState, PhysicalAutoregressiveModel

__all__ = ["BlockSpec", "Kind", "ik_attention_mask", "window_layout", "window_mask", "InferenceState",
           "PhysicalAutoregressiveModel"]
