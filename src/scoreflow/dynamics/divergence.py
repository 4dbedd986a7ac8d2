r"""Divergences :math:`\nabla\cdot F(x) = \operatorname{tr} \partial F/\partial x` of per-sample vector fields.

``fn`` maps a batch ``(B, *D)`` to ``(B, *D)`` and acts on each sample independently, so the
Jacobian of the batched map is block diagonal and one vector-Jacobian product with the same
cotangent ``v`` in every row gives :math:`v^\top J_b` for all B samples at once.  Both
estimators evaluate ``fn`` once and take its VJPs:

- exact: the D basis vectors, :math:`\sum_i e_i^\top J e_i`, vmapped (``torch.func``) in chunks so
  memory stays bounded; ``torch.func`` ignores an outer ``torch.no_grad`` and composes with
  ordinary autograd;
- Hutchinson: a few random probes with :math:`E[vv^\top] = I`, :math:`E[v^\top J v] = \operatorname{tr} J`,
  by ``torch.autograd`` under ``enable_grad`` (cheaper per call for a handful of VJPs).

Both results are differentiable in the parameters ``fn`` captures (for maximum-likelihood
training and score matching) and computable inside a no-grad solve.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import vjp, vmap

from .._checks import check_choice, check_generator, check_int

__all__ = [
    "exact_divergence",
    "hutchinson_divergence",
    "draw_probes",
    "value_and_exact_divergence",
    "value_and_hutchinson_divergence",
    "PROBES",
]

VectorField = Callable[[torch.Tensor], torch.Tensor]

#: Probe distributions for Hutchinson's estimator (both have :math:`E[vv^\top] = I`).
PROBES = ("rademacher", "gaussian")

#: Default bound on the cotangent elements (``chunk * B * D``) of one vmapped VJP.  On a CPU a
#: batched backward only pays while per-operation overhead dominates (measured on the analytic
#: mixture scores: vmap 2x faster than a loop at 160 elements per cotangent, level at 800, 2x
#: slower at 16000), so larger problems take one VJP at a time; accelerators batch far more.
_CPU_CHUNK_ELEMENTS = 2**12
_DEVICE_CHUNK_ELEMENTS = 2**22


def _default_chunk(x: torch.Tensor) -> int:
    budget = _CPU_CHUNK_ELEMENTS if x.device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    return max(1, budget // x.numel())


def _pull(vjp_fn: Callable, cotangents: torch.Tensor) -> torch.Tensor:
    """VJPs of a ``(C, B, *D)`` stack of cotangents (vmapped, or one direct call for C = 1)."""
    if cotangents.shape[0] == 1:
        return vjp_fn(cotangents[0])[0][None]
    return vmap(lambda v: vjp_fn(v)[0])(cotangents)


def _checked_output(fn_name: str, out: object, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else type(out).__name__
        raise ValueError(
            f"{fn_name}: 'fn' must map x of shape {tuple(x.shape)} to a tensor of the same shape, got {got}."
        )
    return out


def value_and_exact_divergence(
    fn: VectorField, x: torch.Tensor, *, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return ``(fn(x), div)`` with :math:`\mathrm{div}_b = \sum_i \partial fn(x)_{b,i} / \partial x_{b,i}`.

    One evaluation of ``fn`` and D vector-Jacobian products with basis vectors, vmapped
    ``chunk_size`` at a time.

    Args:
        fn: per-sample vector field ``(B, *D) -> (B, *D)``.
        x: points, shape ``(B, *D)``.
        chunk_size: basis vectors per vmapped VJP (1: one VJP at a time, no vmap); ``None`` picks the
            largest chunk whose cotangents hold at most 2**12 elements (``chunk * B * D``) on a CPU,
            2**22 on other devices, and at least 1.

    Returns:
        ``fn(x)`` of shape ``(B, *D)`` and the divergence of shape ``(B,)``.

    Raises:
        ValueError: if ``fn`` does not return a tensor shaped like ``x``.
        TypeError / ValueError: if ``chunk_size`` is not an int >= 1.
    """
    batch, dim = x.shape[0], x[0].numel()
    if chunk_size is None:
        chunk_size = _default_chunk(x)
    else:
        check_int("exact_divergence", "chunk_size", chunk_size)
    out, vjp_fn = vjp(fn, x)
    _checked_output("exact_divergence", out, x)
    div = x.new_zeros(batch)
    for start in range(0, dim, chunk_size):
        idx = torch.arange(start, min(start + chunk_size, dim), device=x.device)
        # cotangent j is e_{idx[j]} in every sample's row
        basis = torch.zeros(len(idx), batch, dim, dtype=x.dtype, device=x.device)
        basis[torch.arange(len(idx), device=x.device), :, idx] = 1
        rows = _pull(vjp_fn, basis.reshape(len(idx), *x.shape)).reshape(len(idx), batch, dim)
        div = div + rows.gather(2, idx.reshape(-1, 1, 1).expand(-1, batch, 1)).sum(dim=(0, 2))
    return out, div


def exact_divergence(fn: VectorField, x: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    r"""Exact divergence :math:`\operatorname{tr}\,\partial fn(x)_b / \partial x_b` of a per-sample field, shape ``(B,)``.

    See :func:`value_and_exact_divergence` (this drops the value) for arguments and errors.
    Differentiable in the parameters ``fn`` captures.
    """
    return value_and_exact_divergence(fn, x, chunk_size=chunk_size)[1]


def value_and_hutchinson_divergence(
    fn: VectorField, x: torch.Tensor, probes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return ``(fn(x), est)`` with Hutchinson estimates :math:`\mathrm{est}_{p,b} = v_{p,b}^\top J_b\, v_{p,b}`.

    One evaluation of ``fn`` and one backward pass for all P vector-Jacobian products (``torch.autograd``,
    batched over the probes; the graph is kept, ``create_graph``, when grad mode is on, so the estimate is
    differentiable in ``fn``'s parameters).

    Args:
        fn: per-sample vector field ``(B, *D) -> (B, *D)``.
        x: points, shape ``(B, *D)``.
        probes: ``(P, B, *D)`` probe vectors with :math:`E[vv^\top] = I` (see :func:`draw_probes`).

    Returns:
        ``fn(x)`` of shape ``(B, *D)`` and the ``(P, B)`` estimates; their mean over P is unbiased for the divergence.

    Raises:
        ValueError: if ``probes`` is not shaped ``(P, *x.shape)`` or ``fn`` does not return a tensor shaped like ``x``.
    """
    if not torch.is_tensor(probes) or probes.ndim != x.ndim + 1 or probes.shape[1:] != x.shape:
        got = tuple(probes.shape) if torch.is_tensor(probes) else type(probes).__name__
        raise ValueError(
            f"hutchinson_divergence: argument 'probes' expected shape (P, {', '.join(map(str, x.shape))}), "
            f"got {got}. Fix: draw them with draw_probes(x, n_probes)."
        )
    # Plain autograd (not torch.func's transforms) has the least overhead per call for a few VJPs; all probes go
    # through one backward pass (is_grads_batched vmaps it over the probes).
    keep_graph = torch.is_grad_enabled()
    probes = probes.to(x.dtype)
    with torch.enable_grad():
        leaf = x if x.requires_grad else x.detach().requires_grad_(True)
        out = _checked_output("hutchinson_divergence", fn(leaf), x)
        if not out.requires_grad:
            pulled = torch.zeros_like(probes)
        elif probes.shape[0] == 1:
            pulled = torch.autograd.grad(out, leaf, probes[0], create_graph=keep_graph, allow_unused=True)[0]
            pulled = torch.zeros_like(probes) if pulled is None else pulled[None]
        else:
            pulled = torch.autograd.grad(
                out, leaf, probes, create_graph=keep_graph, allow_unused=True, is_grads_batched=True
            )[0]
            pulled = torch.zeros_like(probes) if pulled is None else pulled
    est = (pulled * probes).reshape(probes.shape[0], x.shape[0], -1).sum(dim=2)
    return (out if keep_graph else out.detach()), est


def hutchinson_divergence(fn: VectorField, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    r"""Hutchinson estimates :math:`v^\top J v` of the divergence for each probe and sample, shape ``(P, B)``.

    See :func:`value_and_hutchinson_divergence` (this drops the value) for arguments and errors.
    Differentiable in the parameters ``fn`` captures.
    """
    return value_and_hutchinson_divergence(fn, x, probes)[1]


def draw_probes(
    x: torch.Tensor,
    n_probes: int,
    kind: str = "rademacher",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Draw ``n_probes`` probes per sample, shape ``(P, B, *D)``, dtype and device of ``x``.

    ``"rademacher"``: entries :math:`\pm 1` with probability 1/2; ``"gaussian"``: standard normal.
    For a fixed Jacobian J the variance of :math:`v^\top J v` is
    :math:`2\|J_s\|_F^2 - 2\sum_i J_{ii}^2` (Rademacher) and :math:`2\|J_s\|_F^2` (Gaussian),
    :math:`J_s = (J + J^\top)/2`, so Rademacher is never worse.

    Raises:
        ValueError: for an unknown ``kind`` (lists the valid ones) or ``n_probes < 1``.
        TypeError: if ``generator`` is not a ``torch.Generator``.
    """
    check_choice("draw_probes", "kind", kind, PROBES)
    check_int("draw_probes", "n_probes", n_probes)
    check_generator("draw_probes", generator)
    shape = (n_probes, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * bits - 1).to(x.dtype)
