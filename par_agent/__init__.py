"""par-agent: the Physical Autoregressive Model (PAR) as a robot policy."""
from par_agent.config import PARConfig
from par_agent.models.par import PhysicalAutoregressiveModel

__version__ = "0.1.0"


def __getattr__(name):  # PARPolicy pulls in stable-baselines3: import it lazily
    if name == "PARPolicy":
        from par_agent.policy import PARPolicy

        return PARPolicy
    raise AttributeError(name)


__all__ = ["PARConfig", "PARPolicy", "PhysicalAutoregressiveModel", "__version__"]
