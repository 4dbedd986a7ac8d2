r"""The training curricula of consistency models: the discretisation N(k) and the target network's EMA.

Song et al. (2023, CT): :math:`N(k) = \lceil\sqrt{k/K\,((s_1+1)^2 - s_0^2) + s_0^2} - 1\rceil + 1` grid points at
iteration k of K (:math:`s_0 = 2, s_1 = 150`), and the target's decay :math:`\mu(k) = \exp(s_0\log\mu_0 / N(k))`.
Song & Dhariwal (2023, iCT): :math:`N(k) = \min(s_0 2^{\lfloor k/K'\rfloor}, s_1) + 1` with
:math:`K' = \lfloor K/(\log_2\lfloor s_1/s_0\rfloor + 1)\rfloor` (:math:`s_0 = 10, s_1 = 1280`), and no EMA (the target is
the online network with its gradient stopped).  Distillation (CD) keeps N fixed (18 to 40 in the paper).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_int, check_instance, check_positive

__all__ = ["discretization_steps", "target_ema_decay", "ema_update", "CURRICULA"]

#: The discretisation curricula: Song et al.'s consistency training ("ct") and the improved one ("ict").
CURRICULA = ("ct", "ict")
_DEFAULTS = {"ct": (2, 150), "ict": (10, 1280)}


def discretization_steps(k: int, total: int, *, kind: str = "ct", s0: int | None = None, s1: int | None = None) -> int:
    r"""The number of grid steps :math:`N(k) - 1` at training iteration ``k`` of ``total``.

    Args:
        k: the iteration, ``0 <= k <= total``.
        total: the number of training iterations K.
        kind: ``"ct"`` (a square-root ramp from ``s0 - 1`` to ``s1`` steps) or ``"ict"`` (doubling from ``s0`` to ``s1``).
        s0, s1: the curriculum's ends (defaults 2, 150 for ``"ct"``; 10, 1280 for ``"ict"``).

    Returns:
        The ``steps`` to pass to :func:`scoreflow.losses.consistency_training_loss` (grid of ``steps + 1`` times).

    Raises:
        ValueError, TypeError: for an unknown kind, ``k`` outside ``[0, total]`` or ``s0 > s1``.
    """
    fn = "discretization_steps"
    check_choice(fn, "kind", kind, CURRICULA)
    total = check_int(fn, "total", total)
    k = check_int(fn, "k", k, minimum=0)
    if k > total:
        raise ValueError(f"{fn}: argument 'k' expected an iteration in [0, total={total}], got {k}.")
    lo, hi = _DEFAULTS[kind]
    s0 = lo if s0 is None else check_int(fn, "s0", s0)
    s1 = hi if s1 is None else check_int(fn, "s1", s1)
    if s0 > s1:
        raise ValueError(f"{fn}: expected s0 <= s1, got s0={s0}, s1={s1}.")
    if kind == "ct":
        points = math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
        return max(points - 1, 1)
    stage = max(total // (int(math.log2(s1 // s0)) + 1), 1)
    return min(s0 * 2 ** (k // stage), s1)


def target_ema_decay(steps: int, *, mu0: float = 0.9, s0: int = 2) -> float:
    r"""CT's decay of the target network at a grid of ``steps`` steps: :math:`\mu = \exp(s_0\log\mu_0/(\text{steps}+1))`.

    Raises:
        ValueError, TypeError: for ``steps < 1`` or ``mu0`` outside (0, 1).
    """
    fn = "target_ema_decay"
    check_int(fn, "steps", steps)
    mu0 = check_positive(fn, "mu0", mu0)
    if not mu0 < 1:
        raise ValueError(f"{fn}: argument 'mu0' expected a decay in (0, 1), got {mu0!r}.")
    return math.exp(check_int(fn, "s0", s0) * math.log(mu0) / (steps + 1))


def ema_update(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    r"""In place, :math:`\theta^- \leftarrow \mu\,\theta^- + (1 - \mu)\,\theta` for every parameter and floating buffer.

    ``target`` is typically ``copy.deepcopy(online)``; ``decay = 0`` copies the online weights (iCT's target).  The
    target keeps its own dtype and device: it may be held in a higher precision than ``online``, or on another device.

    Raises:
        TypeError: if either is not a ``torch.nn.Module``.
        ValueError: if ``decay`` is outside [0, 1] or the two modules' parameters differ in number or shape.
    """
    fn = "ema_update"
    check_instance(fn, "target", target, torch.nn.Module, "copy.deepcopy(f)")
    check_instance(fn, "online", online, torch.nn.Module, "scoreflow.consistency.parameterize(net, sde)")
    decay = check_positive(fn, "decay", decay, allow_zero=True)
    if decay > 1:
        raise ValueError(f"{fn}: argument 'decay' expected a number in [0, 1], got {decay!r}.")
    pairs = list(zip(target.state_dict().values(), online.state_dict().values()))
    if len(target.state_dict()) != len(online.state_dict()) or any(a.shape != b.shape for a, b in pairs):
        raise ValueError(f"{fn}: 'target' and 'online' expected the same parameters; build the target with copy.deepcopy(online).")
    with torch.no_grad():
        for tgt, src in pairs:
            if tgt.is_floating_point():  # in the target's own dtype and device (an EMA may be kept in float32, or on the host)
                tgt.lerp_(src.to(dtype=tgt.dtype, device=tgt.device), 1.0 - decay)
            else:
                tgt.copy_(src)
