"""Adapter modules: the small trainable networks DAS adds to a frozen backbone.

One building block, `Bottleneck`: norm -> down -> ReLU -> dropout -> up, times a fixed scale. It is
used three ways (docs/method.md):

- parallel (ViLT/METER kept blocks): its output is *added beside* a frozen sub-layer, reading the
  un-normalised residual stream (it has its own norm);
- sequential (LaVIN kept layers): `z + f(z)` on the already normalised input of attention (no norm);
- replacement (a skipped block): `x + f(norm(x))`, see `ReplacementAdapter`.

Initialisations: "bert" = every Linear weight ~ N(0, 0.02), biases 0 (the paper's ViLT/METER
adapters, *not* the identity at step 0); "zero" = down xavier-uniform, up 0 (LaVIN: the identity at
step 0, so a freshly skipped block or a fresh kept adapter changes nothing).
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm as in LLaMA (computed in float32, cast back)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(kind: str, dim: int, eps: float = 1e-6) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm', 'rmsnorm' or 'none'")


class Bottleneck(nn.Module):
    """f(x) = scale * up(dropout(relu(down(norm(x))))); no residual.

    `norm` may be a string ("layernorm", "rmsnorm", "none") or a ready module, e.g. a frozen copy
    of the skipped block's own input norm (LaVIN's replacement reads `RMSNorm_attn(x)`).
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        norm: str | nn.Module = "layernorm",
        init: str = "bert",
        scale: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"adapter dims must be positive, got dim={dim}, hidden={hidden}")
        self.norm = make_norm(norm, dim) if isinstance(norm, str) else norm
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        if init == "bert":
            for lin in (self.down, self.up):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
        elif init == "zero":
            nn.init.xavier_uniform_(self.down.weight)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            raise ValueError(f"unknown adapter init {init!r}; expected 'bert' or 'zero'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return self.scale * self.up(self.dropout(torch.relu(self.down(self.norm(x)))))

    def add_to(self, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """target + f(x), with the up-projection accumulated into target by one addmm. On a CPU the adapter's
        (..., D)-wide elementwise passes (bias, scale, add), not its thin matmuls, are most of its time: this
        drops two of them (docs/benchmarks.md, speed)."""
        h = self.dropout(torch.relu(self.down(self.norm(x))))  # (..., r)
        out = torch.addmm(target.reshape(-1, target.shape[-1]), h.reshape(-1, h.shape[-1]), self.up.weight.t(),
                          alpha=self.scale)  # (B*T, D)
        return out.add_(self.up.bias, alpha=self.scale).view(target.shape)


class ReplacementAdapter(Bottleneck):
    """What a skipped block becomes: x + f(norm(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_to(x, x)


class SequentialAdapter(Bottleneck):
    """LaVIN's adapter on the normalised input of attention: z + f(z) (no norm of its own)."""

    def __init__(self, dim: int, hidden: int, *, init: str = "zero", scale: float = 1.0, dropout: float = 0.0):
        super().__init__(dim, hidden, norm="none", init=init, scale=scale, dropout=dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.add_to(z, z)


class RouterAdapter(nn.Module):
    """LaVIN's mixture-of-modality adapter (RepAdapter_Router), as DAS's multimodal LaVIN uses it.

    delta(z) = scale * (w0 * B(a) + w1 * D(a)),  a = dropout(A(z)),  w = softmax(router(z[:, 0]) / t)
    out(x) = x + delta(norm(x))

    A is a 1x1 conv d -> h (xavier), B and D are grouped 1x1 convs h -> d (zero-initialised, so the
    adapter starts as the identity); no non-linearity (RepAdapter style). The 2-way router reads the
    first token, which in LaVIN is the modality ("decision") token. `norm` is identity for the adapter
    on a kept layer's normalised attention input, or a frozen copy of the layer's input RMSNorm for
    the adapter that replaces a skipped layer.

    Routing weights can be recorded once (`mode="record"`) and replayed (`mode="replay"`): LaVIN
    computes them from the decision token, which generation with a KV cache does not see again after
    the first step. In the default mode nothing is kept (a kept tensor would hold the autograd graph).
    """

    def __init__(self, dim: int, hidden: int, *, norm: nn.Module | None = None, groups: int = 2,
                 temperature: float = 10.0, scale: float = 1.0, dropout: float = 0.1):
        super().__init__()
        if dim <= 0 or hidden <= 0 or hidden % groups or dim % groups:
            raise ValueError(f"router adapter dims must be positive and divisible by groups={groups}: dim={dim}, hidden={hidden}")
        self.norm = norm if norm is not None else nn.Identity()
        self.down = nn.Conv1d(dim, hidden, 1)
        self.up_b = nn.Conv1d(hidden, dim, 1, groups=groups)
        self.up_d = nn.Conv1d(hidden, dim, 1, groups=groups)
        self.router = nn.Linear(dim, 2)
        self.dropout = nn.Dropout(dropout)
        self.temperature, self.scale = temperature, scale
        self.routing: torch.Tensor | None = None  # (B, 2), recorded weights
        self.mode = "compute"  # or "record" / "replay"
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        for up in (self.up_b, self.up_d):
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)

    @property
    def up(self) -> nn.Conv1d:  # the dtype reference `skipping._run` reads
        return self.up_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        z = self.norm(x)
        if self.mode == "replay":
            if self.routing is None:
                raise RuntimeError("router adapter in replay mode without recorded routing weights")
            w = self.routing
        else:
            w = torch.softmax(self.router(z[:, 0]) / self.temperature, dim=-1)  # (B, 2)
            if self.mode == "record":
                self.routing = w
        a = self.dropout(self.down(z.transpose(1, 2)))  # (B, h, T)
        delta = self.up_b(a) * w[:, 0, None, None] + self.up_d(a) * w[:, 1, None, None]  # (B, D, T)
        return x + self.scale * delta.transpose(1, 2)
