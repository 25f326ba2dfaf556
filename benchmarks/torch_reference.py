"""PyTorch's three ways to train the reference model (seed document 001): a 2-layer
attention-only transformer as an nn.Module, torch.optim.AdamW, PyTorch's default threads.

- eager: the loop users run today, one model after another;
- compile: the same training step under torch.compile;
- vmap: an ensemble as one step, torch.func (functional_call, grad, vmap) over stacked
  parameters, AdamW on the stacked parameters.

Written as its users write it, not slowed down: fused QKV projection, batched heads, a causal
mask buffer, fresh batches from torch.randint every step, on the device.
"""

from __future__ import annotations

import copy
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


def make_batch(batch_size=64, half=25, vocab=64, device="cpu"):
    first = torch.randint(0, vocab, (batch_size, half), device=device)
    return torch.cat([first, first], dim=1)


# AdamW as the JAX reference configuration sets it (RunConfig: lr 1e-2, weight decay 0.01,
# betas and eps PyTorch's defaults, which are optax's); tests/test_bench_torch.py checks them.
LR, WEIGHT_DECAY = 1e-2, 0.01
WAYS = ("eager", "compile", "vmap")


def next_token_loss(logits, tokens):
    return F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]), tokens[..., 1:].reshape(-1))


def make_model(seed: int, device: str = "cpu", **shape) -> AttnOnlyTransformer:
    """The reference model, or another `shape` (AttnOnlyTransformer's arguments: d_vocab,
    n_ctx, d_model, n_heads, n_layers)."""
    torch.manual_seed(seed)
    return AttnOnlyTransformer(**shape).to(device)


def module_step(model: nn.Module):
    """One model's training step, as its users write it: tokens [B, T] -> loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def step(tokens):
        loss = next_token_loss(model(tokens), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def ensemble_step(models: list[nn.Module]):
    """The members' steps as one: their parameters stacked, the loss of one member's
    functional_call, its gradient by torch.func.grad, vmapped over members; the AdamW update
    on the stacked parameters (elementwise, so each member's is the update it would get
    alone). tokens [M, B, T] -> losses [M]."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss_of(p, b, tokens):
        return next_token_loss(functional_call(base, (p, b), (tokens,)), tokens)

    grads_and_losses = vmap(grad_and_value(loss_of))
    opt = torch.optim.AdamW(params.values(), lr=LR, weight_decay=WEIGHT_DECAY)

    def step(tokens):
        grads, losses = grads_and_losses(params, buffers, tokens)
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()
        return losses.detach()
    return step


def make_way(way: str, seeds: list[int], device: str = "cpu", **shape):
    """The training step of one PyTorch way: eager and compile train seeds[0] alone, vmap
    every seed at once (tokens [len(seeds), B, T])."""
    if way == "vmap":
        return ensemble_step([make_model(s, device, **shape) for s in seeds])
    step = module_step(make_model(seeds[0], device, **shape))
    return torch.compile(step) if way == "compile" else step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_way(way: str, steps: int, members: int = 8, device: str = "cpu", warmup: int = 5,
             chunks: int = 5, batch_size: int = 64, **shape) -> dict:
    """Warm-up (and compile) timed apart, then the median of `chunks` chunks of `steps` steps,
    a fresh batch drawn on the device every step. `shape`: another model than the reference
    (`make_model`); its sequences are repeated halves of n_ctx // 2 tokens."""
    m = members if way == "vmap" else 1
    step = make_way(way, list(range(m)), device, **shape)
    half, vocab = shape.get("n_ctx", 50) // 2, shape.get("d_vocab", 64)

    def batch():
        tokens = make_batch(batch_size * m, half=half, vocab=vocab, device=device)
        return tokens.view(m, batch_size, -1) if way == "vmap" else tokens

    synchronize(device)
    tic = time.perf_counter()
    for _ in range(warmup):
        step(batch())
    synchronize(device)
    warmup_s = time.perf_counter() - tic
    seq_len = batch().shape[-1]
    times = []
    for _ in range(chunks):
        tic = time.perf_counter()
        for _ in range(steps):
            step(batch())
        synchronize(device)
        times.append(time.perf_counter() - tic)
    seconds = sorted(times)[len(times) // 2]
    return {"way": way, "members": m, "device": device, "steps_timed": steps, "warmup_steps": warmup,
            "warmup_s": warmup_s, "seconds_per_chunk": seconds, "model_steps_per_s": m * steps / seconds,
            "tokens_per_s": m * steps * batch_size * seq_len / seconds}


def flops_per_step(batch_size=64, T=50, d_model=64, n_heads=4, n_layers=2, d_vocab=64) -> float:
    """Matmul FLOPs of one training step (forward x 3), counted by hand for the report."""
    tokens = batch_size * T
    per_layer = 2 * tokens * d_model * 3 * d_model + 2 * tokens * d_model * d_model \
        + 2 * 2 * batch_size * T * T * d_model
    fwd = n_layers * per_layer + 2 * tokens * d_model * d_vocab
    return 3.0 * fwd


if __name__ == "__main__":
    for way in WAYS:
        r = time_way(way, 40)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {way} ({r['members']} members): "
              f"{r['model_steps_per_s']:.1f} model-steps/s, warm-up {r['warmup_s']:.1f} s")
