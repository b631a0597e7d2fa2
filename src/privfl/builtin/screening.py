"""Built-in update screening: refuse updates that would poison the aggregate.

An update with NaN or infinite values, or of another shape or dtype than the global
parameters, is rejected before aggregation; the round goes on without it and the
round record lists the client and the reason.
"""

from __future__ import annotations

import torch

from privfl.plugins import hookimpl
from privfl.records import ClientResult


@hookimpl(trylast=True)
def privfl_update_received(federation, result: ClientResult) -> str | None:
    expected = tuple(federation.params.shape)
    if tuple(result.update.shape) != expected:
        return f"shape {tuple(result.update.shape)} differs from the model's {expected}"
    update = result.update
    if update.dtype != federation.params.dtype:
        return f"dtype {update.dtype} differs from the model's {federation.params.dtype}"
    # Fast path: a sum is finite whenever every value is (NaN and infinity propagate);
    # only a non-finite sum needs the element-wise check, since huge values can overflow.
    suspicious = update.is_floating_point() and not bool(torch.isfinite(update.sum()))
    if suspicious and not bool(torch.isfinite(update).all()):
        return "update holds NaN or infinite values"
    return None
