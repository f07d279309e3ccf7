"""Baselines trained and evaluated with par-agent's data and evaluation code, for side-by-side rows.

``diffusion_policy``: Diffusion Policy (Chi et al. 2023) to ManiSkill's baseline recipe.
"""
