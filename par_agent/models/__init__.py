from par_agent.models.context import ContextLayout, Contexts
from par_agent.models.masks import BlockSpec, Kind, attention_mask, ik_attention_mask, window_layout, window_mask
from par_agent.models.normalizer import Normalizer, get_dataset_stats, set_dataset_stats
from par_agent.models.par import PhysicalAutoregressiveModel

__all__ = ["BlockSpec", "ContextLayout", "Contexts", "Kind", "attention_mask", "ik_attention_mask", "window_layout", "window_mask",
           "Normalizer", "PhysicalAutoregressiveModel", "get_dataset_stats", "set_dataset_stats"]
