"""The reconstruction-score network ``s_theta`` of MeDS (paper: arXiv:2605.26676, stage 2).

It works on cached, frozen encoder features: tokens ``(N, L, D)`` where ``D`` is the
concatenation of the encoder's feature groups (``group_dims``). A noisy MLP bottleneck
squeezes every token, a few linear-attention transformer blocks let tokens of one image
exchange context, and one linear head per group reconstructs that group. The anomaly
score of a patch is the mean over groups of ``1 - cos(encoder feature, reconstruction)``.

Because it consumes tokens, the same network serves CNN encoders (one token per grid
cell) and ViT encoders (one token per patch). The bottleneck dropout and the softmax-free
attention follow Dinomaly: both keep the decoder from learning an identity map that
would reconstruct defects as well as normal patterns.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Size of the reconstruction network.

    Attributes:
        dim: Token width inside the decoder.
        depth: Number of linear-attention transformer blocks.
        heads: Attention heads per block.
        mlp_ratio: Hidden width of each block's MLP, as a multiple of ``dim``.
        bottleneck_ratio: Hidden width of the bottleneck MLP, as a multiple of ``dim``.
        dropout: Dropout of the noisy bottleneck (the paper uses 0.2).
    """

    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    bottleneck_ratio: float = 2.0
    dropout: float = 0.2

    def __post_init__(self):
        for name in ("dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"NetworkConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"NetworkConfig: dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"NetworkConfig: dropout must be in [0, 1), got {self.dropout}")


#: Named sizes. "small" keeps CPU training practical with the embedded backbone;
#: "dinomaly" is the paper's decoder (8 blocks of width 768 with 12 heads).
NETWORK_PRESETS = {
    "small": NetworkConfig(),
    "base": NetworkConfig(dim=256, depth=4, heads=8, mlp_ratio=4.0),
    "dinomaly": NetworkConfig(dim=768, depth=8, heads=12, mlp_ratio=4.0, bottleneck_ratio=4.0),
}


class LinearAttention(nn.Module):
    """Softmax-free attention with the ``elu + 1`` feature map: O(L) in the tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, dh)
        q = F.elu(q) + 1.0
        k = F.elu(k) + 1.0
        context = torch.einsum("nhld,nhle->nhde", k, v)  # (N, heads, dh, dh)
        normaliser = torch.einsum("nhld,nhd->nhl", q, k.sum(dim=2)).clamp_min(1e-6)
        out = torch.einsum("nhld,nhde->nhle", q, context) / normaliser.unsqueeze(-1)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block: linear attention, then an MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LinearAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReconstructionNetwork(nn.Module):
    """Bottleneck + decoder that reconstructs each encoder feature group.

    Args:
        group_dims: Channels of each encoder feature group, in order; their sum is ``D``.
        config: Network size (see :data:`NETWORK_PRESETS`).
    """

    def __init__(self, group_dims: Sequence[int], config: NetworkConfig = NetworkConfig()):
        super().__init__()
        group_dims = tuple(int(d) for d in group_dims)
        if not group_dims or min(group_dims) < 1:
            raise ValueError(f"ReconstructionNetwork: group_dims must be positive sizes, got {group_dims}")
        self.group_dims = group_dims
        self.config = config
        in_dim = sum(group_dims)
        hidden = int(round(config.dim * config.bottleneck_ratio))
        self.input_norm = nn.LayerNorm(in_dim)
        self.bottleneck = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, config.dim),
        )
        self.blocks = nn.ModuleList(
            DecoderBlock(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.output_norm = nn.LayerNorm(config.dim)
        self.heads = nn.ModuleList(nn.Linear(config.dim, d) for d in group_dims)

    def reconstruct(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Reconstruct every feature group.

        Args:
            features: Encoder tokens ``(N, L, D)``.

        Returns:
            One tensor ``(N, L, D_g)`` per group.
        """
        x = self.bottleneck(self.input_norm(features))
        for block in self.blocks:
            x = block(x)
        x = self.output_norm(x)
        return [head(x) for head in self.heads]

    def patch_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Per-group ``1 - cos`` between each feature group and its reconstruction.

        Args:
            features: Encoder tokens ``(N, L, D)``.

        Returns:
            ``(N, L, n_groups)`` distances in ``[0, 2]``.
        """
        if features.dim() != 3 or features.shape[-1] != sum(self.group_dims):
            raise ValueError(
                f"ReconstructionNetwork: features must be (N, L, {sum(self.group_dims)}), "
                f"got {tuple(features.shape)}"
            )
        targets = torch.split(features, self.group_dims, dim=-1)
        reconstructions = self.reconstruct(features)
        return torch.stack(
            [1.0 - F.cosine_similarity(t, r, dim=-1, eps=1e-8) for t, r in zip(targets, reconstructions)],
            dim=-1,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Patch anomaly scores ``(N, L)``: the mean over groups of ``1 - cos``."""
        return self.patch_distances(features).mean(dim=-1)
