"""A PyTorch replica of the bundled tiny GPT (examples/tiny-gpt/src/model.rs).

Token + position embeddings (positions restart at 0 in every document), pre-LN blocks with
causal self-attention and an exact-erf GELU MLP, a final LayerNorm and a Linear head. The
parameter names are those `Gpt::named_tensors` exports (`blocks.0.attn.qkv.weight`, ...), so
`load_state_dict` of `weights.safetensors` fills every tensor and nothing else.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.n_heads
        dh = d // h
        # burn: qkv(x).reshape([b, s, 3, h, dh]), part i = narrow(2, i, 1), heads to dim 1.
        qkv = self.qkv(x).reshape(b, s, 3, h, dh)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        scores = q @ k.transpose(2, 3) / math.sqrt(dh)
        att = torch.softmax(scores + bias, dim=3)
        y = (att @ v).transpose(1, 2).reshape(b, s, d)
        return self.out(y)


class Mlp(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = Attention(d, n_heads)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = Mlp(d, d_ff)


class Gpt(nn.Module):
    def __init__(self, vocab: int, d: int, n_layers: int, n_heads: int, d_ff: int, max_pos: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_pos, d)
        self.blocks = nn.ModuleList(Block(d, n_heads, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.head = nn.Linear(d, vocab)

    def forward(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits `[b, s, vocab]` of right-padded single-document sequences."""
        s = inputs.shape[1]
        x = self.tok(inputs) + self.pos(positions)
        # burn's attention bias: 0 where the key is not later than the query, -1e9 elsewhere.
        causal = torch.ones(s, s, dtype=torch.bool, device=inputs.device).tril()
        bias = torch.zeros(s, s, dtype=x.dtype, device=inputs.device).masked_fill(~causal, -1e9)
        for blk in self.blocks:
            x = x + blk.attn(blk.ln1(x), bias)
            x = x + blk.mlp(blk.ln2(x))
        return self.head(self.ln_f(x))

    @staticmethod
    def from_weights(weights: dict, config: dict) -> "Gpt":
        vocab, d = weights["tok.weight"].shape
        max_pos = weights["pos.weight"].shape[0]
        d_ff = weights["blocks.0.mlp.fc1.weight"].shape[0]
        n_layers = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
        model = Gpt(vocab, d, n_layers, config["n_heads"], d_ff, max_pos)
        model.load_state_dict(weights, strict=True)
        return model

    def tracked_modules(self) -> list:
        """The Linear layers the hook tracks: every block's qkv, out, fc1 and fc2 (not the head)."""
        return [
            f"blocks.{i}.{m}"
            for i in range(len(self.blocks))
            for m in ("attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2")
        ]
