"""Demonstrations for PAR: collection (``par-collect``), the compact format and the training dataset."""
from par_agent.data.compact import export_compact, import_compact
from par_agent.data.dataset import (PhysicalStepDataset, compute_stats, demo_h5_files, load_stats, merge_stats,
                                    save_stats, split_episodes)

__all__ = [
    "PhysicalStepDataset",
    "compute_stats",
    "demo_h5_files",
    "export_compact",
    "import_compact",
    "load_stats",
    "merge_stats",
    "save_stats",
    "split_episodes",
]
