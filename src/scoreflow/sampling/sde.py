r"""Sampling by the reverse-time SDE with torchsde's solvers."""

from __future__ import annotations

import warnings

import torch
import torchsde

from .._checks import check_brownian, check_choice, check_generator, check_int, check_positive
from ..dynamics.counting import ScoreFn
from ..dynamics.reverse_sde import ReverseSDE
from ..sde import ForwardSDE
from ._common import check_sde, grad_mode, resolve_t_min, start_counted, tweedie_denoise
from .result import SampleResult

__all__ = ["sample_sde", "SDE_METHODS", "SDE_STRONG_ORDERS", "brownian_motion"]

#: torchsde method -> the sde_type torchsde requires for it. The reverse SDE has additive
#: noise, where Itô and Stratonovich coincide, so every method integrates the same SDE.
SDE_METHODS = {
    "euler": "ito",
    "milstein": "ito",
    "srk": "ito",
    "heun": "stratonovich",
    "midpoint": "stratonovich",
    "euler_heun": "stratonovich",
    "reversible_heun": "stratonovich",
}
#: Declared strong orders for additive noise (Euler-Maruyama is order 1, not 1/2, here).
SDE_STRONG_ORDERS = {
    "euler": 1.0, "milstein": 1.0, "srk": 1.5, "heun": 1.0, "midpoint": 1.0, "euler_heun": 1.0, "reversible_heun": 1.0,
}


def brownian_motion(
    x_T: torch.Tensor,
    duration: float,
    *,
    generator: torch.Generator | None = None,
    levy_area: bool = False,
    query_independent: bool = False,
) -> torchsde.BrownianInterval:
    """A Brownian path on ``[0, duration]`` (solver time s = T - t) for the flattened state of ``x_T``.

    The same generator state gives the same path for the same query times. A torchsde
    ``BrownianInterval`` fixes its path where it is first queried, so a fresh one queried on
    another grid is another path. To share one path across step counts (strong-order studies),
    either query one object on the finest grid first and then reuse it on coarser nested grids,
    or build it with ``query_independent=True`` (torchsde's dyadic ``halfway_tree``: the same path
    however it is queried, 4-5x slower to query); pass it to :func:`sample_sde` as ``bm``.
    """
    entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device if generator else "cpu"))
    extra = {"halfway_tree": True, "tol": duration * 2.0**-20} if query_independent else {}
    return torchsde.BrownianInterval(
        t0=0.0,
        t1=duration,
        size=(x_T.shape[0], x_T[0].numel()),
        dtype=x_T.dtype,
        device=x_T.device,
        entropy=entropy,
        levy_area_approximation="space-time" if levy_area else "none",
        **extra,
    )


def sample_sde(
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    method: str = "euler",
    steps: int | None = None,
    dt: float | None = None,
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    generator: torch.Generator | None = None,
    bm: torchsde.BrownianInterval | None = None,
    t_min: float | None = None,
    denoise_final: bool = False,
    return_trajectory: bool = False,
    enable_grad: bool = False,
) -> SampleResult:
    r"""Integrate the reverse-time SDE :math:`dx = [f x - g^2 s]\,dt + g\,d\bar W` from T down to ``t_min``.

    torchsde runs in :math:`s = T - t` on the flattened state (see :class:`ReverseSDE`).

    Args:
        score: score model ``score(x, t)``.
        sde: the forward SDE.
        x_T: initial states at time T, shape ``(B, *D)``.
        method: one of ``SDE_METHODS`` (torchsde's names).
        steps: number of uniform steps (give this or ``dt``; with ``adaptive=True`` the initial step).
        dt: step length.
        adaptive: error-controlled stepping (torchsde's step doubling) with ``rtol``/``atol``.
        generator: seeds the Brownian path; equal generator states give bit-identical samples.
        bm: a Brownian motion on ``[0, T - t_min]`` of size ``(B, prod(D))`` (e.g. from
            :func:`brownian_motion`) used instead of a fresh one; give this or ``generator``.
        t_min: final time (default ``sde.t_min``).
        denoise_final: finish with Tweedie's denoising step at ``t_min`` (one NFE).
        return_trajectory: also return the states on the uniform grid (``steps`` given).
        enable_grad: keep the autograd graph; off by default.

    Returns:
        A :class:`SampleResult` with ``samples`` at ``t_min`` and ``nfe``.

    Raises:
        ValueError: for an unknown method (listing the valid ones), a missing ``steps``/``dt``,
            ``t_min`` outside ``(0, T)``, a malformed ``x_T``, both ``bm`` and ``generator``, or a
            ``bm`` of the wrong size or span.
        NonFiniteError: if the score becomes NaN/inf; the message names the time.
    """
    fn = "sample_sde"
    check_sde(fn, sde)
    check_choice(fn, "method", method, SDE_METHODS)
    check_generator(fn, generator)
    if bm is not None and generator is not None:
        raise ValueError(f"{fn}: give 'generator' (a fresh Brownian path) or 'bm' (a given one), not both.")
    t_min = resolve_t_min(fn, sde, t_min)
    duration = sde.T - t_min
    if (steps is None) == (dt is None):
        raise ValueError(f"{fn}: give exactly one of 'steps' or 'dt', got steps={steps!r}, dt={dt!r}.")
    if steps is not None:
        check_int(fn, "steps", steps)
        dt = duration / steps
        grid = torch.linspace(0.0, duration, steps + 1, dtype=x_T.dtype, device=x_T.device)
    else:
        dt = check_positive(fn, "dt", dt)
        grid = torch.tensor([0.0, duration], dtype=x_T.dtype, device=x_T.device)
    if not return_trajectory:
        grid = grid[[0, -1]]
    if adaptive:
        check_positive(fn, "rtol", rtol)
        check_positive(fn, "atol", atol)

    with grad_mode(enable_grad):
        counted = start_counted(fn, score, sde, x_T, sde.T)
    reverse = ReverseSDE(counted, sde, tuple(x_T.shape[1:]), sde_type=SDE_METHODS[method])
    if bm is None:
        # The path must cover the grid's last time as rounded in x_T's dtype.
        bm = brownian_motion(x_T, float(grid[-1]), generator=generator, levy_area=method == "srk")
    else:
        check_brownian(fn, bm, x_T, duration, levy_area=method == "srk")
    y0 = x_T.reshape(x_T.shape[0], -1)
    with grad_mode(enable_grad):
        # A step a hair longer than duration/steps stops torchsde's float round-off from
        # adding a vanishing extra step; the last step is clipped to land on t_min exactly.
        with warnings.catch_warnings():
            # torchsde warns about adaptive Euler-Maruyama with non-additive noise; this
            # noise is additive (g depends on t only) even though declared diagonal.
            warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed")
            ys = torchsde.sdeint(
                reverse, y0, grid, bm=bm, method=method, dt=dt * (1 + 1e-9), adaptive=adaptive, rtol=rtol, atol=atol
            )
        traj = ys.reshape((ys.shape[0], *x_T.shape))
        samples = traj[-1]
        if denoise_final:
            samples = tweedie_denoise(counted, sde, samples, t_min)
    return SampleResult(
        samples=samples,
        nfe=counted.nfe,
        times=(sde.T - grid) if return_trajectory else None,
        trajectory=traj if return_trajectory else None,
    )
