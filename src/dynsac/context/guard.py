"""The context guard: rows of a context that are non-finite or out of bounds fall back to zeros.

In the context layer because the SAC update applies it to every batch's context (the sac layer
must not import the safety layer, which comes after it).
"""

from __future__ import annotations

import torch
from torch import Tensor


def guard_context(context: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Rows of `context` (B, C) holding NaN/Inf or entries beyond +-`bound` fall back to zeros.

    Returns the guarded context and the number of rows replaced, as a 0-d tensor (no host sync).
    """
    bad = ~(torch.isfinite(context) & (context.abs() <= bound)).all(dim=-1, keepdim=True)
    return torch.where(bad, torch.zeros_like(context), context), bad.sum()
