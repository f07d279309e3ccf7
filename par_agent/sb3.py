"""Stable-Baselines3 pieces for learning on PAR's physical tokens (``par_agent.PhysicalTokenObservation``).

    env = PhysicalTokenObservation.from_pretrained(make_env("PushCube-v1"), "par-pushcube")
    model = PPO("MultiInputPolicy", env, policy_kwargs={"features_extractor_class": PhysicalTokenExtractor})

Works the same with SAC (and any SB3 algorithm that takes ``MultiInputPolicy``).
"""
from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class PhysicalTokenExtractor(BaseFeaturesExtractor):
    """Features of one physical token: attention pooling over the frame tokens plus an MLP of the state.

    Frame branch: each frame token ``(P, C)`` is projected to ``token_width`` and given a learned
    position embedding (the tokens are 2x2 latent patches in raster order, so the position says
    *where* in the image a patch is); ``num_queries`` learned queries attend over the P tokens with
    one ``nn.MultiheadAttention`` layer (a pre-norm Perceiver-style read-out), and the query
    outputs are flattened. State branch: ``Linear-ReLU-Linear-ReLU`` to ``state_width``. The two
    are concatenated and mapped by ``Linear-ReLU`` to ``features_dim``.

    Keys other than ``frame_tokens`` and ``state`` (e.g. ``rgb`` with ``keep_rgb=True``) are ignored.

    Args:
        observation_space: the wrapper's ``Dict`` with ``frame_tokens`` ``(P, C)`` and ``state`` ``(D,)``
            (``state`` may be absent).
        features_dim: size of the output features.
        token_width: width of the projected frame tokens and of the attention.
        num_heads: attention heads (must divide ``token_width``).
        num_queries: learned queries; the frame branch gives ``num_queries * token_width`` numbers.
        state_width: width of the state MLP.
    """

    def __init__(self, observation_space: spaces.Dict, features_dim: int = 128, token_width: int = 64,
                 num_heads: int = 4, num_queries: int = 1, state_width: int = 64) -> None:
        if not isinstance(observation_space, spaces.Dict) or "frame_tokens" not in observation_space.spaces:
            raise ValueError(
                "PhysicalTokenExtractor needs a Dict observation space with 'frame_tokens' (P, C) "
                f"(wrap the env in par_agent.PhysicalTokenObservation), got {observation_space}"
            )
        if token_width % num_heads:
            raise ValueError(f"token_width={token_width} must be divisible by num_heads={num_heads}")
        if min(features_dim, token_width, num_queries, state_width) < 1:
            raise ValueError("features_dim, token_width, num_queries and state_width must be >= 1")
        super().__init__(observation_space, features_dim)
        p, c = observation_space["frame_tokens"].shape
        self.token_in = nn.Linear(c, token_width)
        self.pos = nn.Parameter(torch.randn(p, token_width) * 0.02)
        self.query = nn.Parameter(torch.randn(num_queries, token_width) * 0.02)
        self.norm_kv = nn.LayerNorm(token_width)
        self.attn = nn.MultiheadAttention(token_width, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(token_width)
        frame_out = num_queries * token_width
        self.has_state = "state" in observation_space.spaces
        state_out = 0
        if self.has_state:
            d = observation_space["state"].shape[-1]
            self.state_mlp = nn.Sequential(nn.Linear(d, state_width), nn.ReLU(), nn.Linear(state_width, state_width), nn.ReLU())
            state_out = state_width
        self.out = nn.Sequential(nn.Linear(frame_out + state_out, features_dim), nn.ReLU())

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """``frame_tokens`` (B, P, C), ``state`` (B, D) -> features (B, features_dim)."""
        z = observations["frame_tokens"].float()
        kv = self.norm_kv(self.token_in(z) + self.pos)
        q = self.query.expand(z.shape[0], -1, -1)
        pooled, _ = self.attn(q, kv, kv, need_weights=False)
        parts = [self.norm_out(pooled + q).flatten(1)]
        if self.has_state:
            parts.append(self.state_mlp(observations["state"].float()))
        return self.out(torch.cat(parts, dim=-1))
