"""The PyTorch loop users run today (seed document 001): a 2-layer attention-only transformer
as an nn.Module, torch.optim.AdamW, eager, one model after another, PyTorch's default threads.

Written as its users write it, not slowed down: fused QKV projection, batched heads, a causal
mask buffer, fresh batches from torch.randint every step.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_ctx: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        z = torch.softmax(scores, dim=-1) @ v
        return self.out(z.transpose(1, 2).reshape(B, T, D))


class AttnOnlyTransformer(nn.Module):
    def __init__(self, d_vocab=64, n_ctx=50, d_model=64, n_heads=4, n_layers=2):
        super().__init__()
        self.embed = nn.Embedding(d_vocab, d_model)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model) * 0.02)
        self.layers = nn.ModuleList(Attention(d_model, n_heads, n_ctx) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, d_vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for layer in self.layers:
            x = x + layer(x)
        return self.unembed(x)


def make_batch(batch_size=64, half=25, vocab=64):
    first = torch.randint(0, vocab, (batch_size, half))
    return torch.cat([first, first], dim=1)


def train_one(steps: int, seed: int = 0, lr: float = 1e-3, batch_size: int = 64) -> float:
    """Train one model for `steps`; returns the seconds the steps took (after 5 warm-up steps)."""
    torch.manual_seed(seed)
    model = AttnOnlyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def step():
        tokens = make_batch(batch_size)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for _ in range(5):
        step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - tic


def flops_per_step(batch_size=64, T=50, d_model=64, n_heads=4, n_layers=2, d_vocab=64) -> float:
    """Matmul FLOPs of one training step (forward x 3), counted by hand for the report."""
    tokens = batch_size * T
    per_layer = 2 * tokens * d_model * 3 * d_model + 2 * tokens * d_model * d_model \
        + 2 * 2 * batch_size * T * T * d_model
    fwd = n_layers * per_layer + 2 * tokens * d_model * d_vocab
    return 3.0 * fwd


if __name__ == "__main__":
    s = train_one(200)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {200 / s:.1f} steps/s")
