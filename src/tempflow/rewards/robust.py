"""Scoring that survives a reward failing on some samples: a batch that raises is scored one
sample at a time, and the samples that still raise (or return NaN / inf) are marked NaN.

A :class:`UserError` (bad configuration, a reward server that stays down) is never caught: it
stops the run with its message.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from tempflow.errors import UserError
from tempflow.rewards.registry import Reward, score


class Scored(NamedTuple):
    """values: float32 [B], NaN where not scored; errors: messages of the exceptions caught."""

    values: Tensor
    errors: list[str]


def _message(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def score_or_nan(reward: Reward, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict] | None = None) -> Scored:
    """``score`` on the batch; if it raises, on each sample alone; NaN for those that fail.

    images [B, 3, H, W]; returns float32 [B] with inf turned into NaN (a failed sample)."""
    try:
        out = score(reward, images, prompts, metadata)
        errors: list[str] = []
    except UserError:
        raise
    except Exception as batch_error:  # find the samples that fail
        errors = [_message(batch_error)]
        values = []
        for i in range(images.shape[0]):
            try:
                meta = None if metadata is None else [metadata[i]]
                values.append(score(reward, images[i:i + 1], [prompts[i]], meta)[0])
            except UserError:
                raise
            except Exception as e:
                errors.append(f"sample {i}: {_message(e)}")
                values.append(torch.tensor(float("nan")))
        out = torch.stack(values) if values else torch.zeros(0)
    return Scored(torch.where(torch.isfinite(out), out, torch.full_like(out, float("nan"))), errors)
