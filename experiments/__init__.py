"""Experiments beside the library: diagnostics behind the docs' findings and the Diffusion Policy
baseline. Run as `python -m experiments.NAME` from the repository root; nothing in `par_agent/`
imports them."""
