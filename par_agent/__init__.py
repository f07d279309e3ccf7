"""par-agent: the Physical Autoregressive Model (PAR) as a robot policy."""
from par_agent.config import PARConfig
from par_agent.models.par import PhysicalAutoregressiveModel

__version__ = "0.1.0"


_LAZY = {"PARPolicy": "par_agent.policy", "PhysicalTokenObservation": "par_agent.tokens",
         "make_token_vec_env": "par_agent.tokens"}


def __getattr__(name):  # these pull in stable-baselines3 / gymnasium wrappers: import them lazily
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'par_agent' has no attribute {name!r}")


__all__ = ["PARConfig", "PARPolicy", "PhysicalAutoregressiveModel", "PhysicalTokenObservation", "make_token_vec_env",
           "__version__"]
