"""The result object every sampler returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleResult:
    """Samples and the statistics of the solve that produced them.

    Attributes:
        samples: the final states, shape ``(B, *D)``.
        nfe: number of score evaluations used (rejected adaptive steps and a final
            denoising step included).
        times: the times of ``trajectory`` (decreasing from T): ``T`` and every accepted step with
            ``return_trajectory=True``, the requested times with ``save_at=``; else ``None``.
        trajectory: states at ``times``, shape ``(len(times), B, *D)``, when requested.
        stats: method-specific extras (e.g. step counts, acceptance rates).
    """

    samples: torch.Tensor
    nfe: int
    times: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)
