"""A word-level text encoder for small closed-vocabulary prompt languages (the shapes world).

Prompts are lower-cased and split on whitespace; every word must be in the vocabulary.
Token 0 is padding and token 1 a leading [CLS] token, so the empty prompt (used for
caption dropout and as the CFG unconditional input) is the sequence [CLS, PAD, ...].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tempflow.errors import UserError

PAD, CLS = 0, 1


class WordTokenizer:
    """Maps prompts to fixed-length id tensors [B, max_length]."""

    def __init__(self, vocab: Sequence[str], max_length: int):
        self.vocab = list(vocab)
        self.max_length = max_length
        self._ids = {w: i + 2 for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab) + 2

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        rows = []
        for prompt in prompts:
            words = prompt.lower().split()
            unknown = [w for w in words if w not in self._ids]
            if unknown:
                raise UserError(
                    f"unknown word {unknown[0]!r} in prompt {prompt!r}: this model knows only "
                    f"{', '.join(sorted(self.vocab))} (rephrase with these words)")
            if len(words) + 1 > self.max_length:
                raise UserError(f"prompt {prompt!r} has {len(words)} words; this model takes at "
                                f"most {self.max_length - 1} (shorten the prompt)")
            ids = [CLS] + [self._ids[w] for w in words]
            rows.append(ids + [PAD] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


class WordTextEncoder(nn.Module):
    """Token embeddings + a small pre-norm transformer encoder.

    forward(ids [B, L]) -> (tokens [B, L, dim], pooled [B, dim]); pooled is the [CLS] output.
    """

    def __init__(self, vocab_size: int, max_length: int, dim: int, num_layers: int, num_heads: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=ids == PAD))
        return h, h[:, 0]
