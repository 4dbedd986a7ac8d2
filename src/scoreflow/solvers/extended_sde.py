r"""Extended reverse SDEs with a noise scale that varies along the solve: ER-SDE-Solver and SA-Solver.

In the scaled variables :math:`y = x/\alpha`, :math:`\bar\sigma = \sigma/\alpha = e^{-\lambda}` every forward process is
:math:`y = x_0 + \bar\sigma\varepsilon`, and the reverse SDEs that keep its marginals are (Cui et al. 2023, ER-SDE)

.. math:: dy = \frac{\varphi'(\bar\sigma)}{\varphi(\bar\sigma)}\,(y - \hat x_0)\,d\bar\sigma + \sqrt{2\eta(\bar\sigma)\,\bar\sigma}\;d\bar W,
          \qquad \eta = \frac{\bar\sigma\varphi'}{\varphi} - 1 \ge 0,

one per *noise scale function* :math:`\varphi`: :math:`\varphi = \bar\sigma` is the probability-flow ODE,
:math:`\varphi = \bar\sigma^2` Anderson's reverse SDE, :math:`\varphi = \bar\sigma^{1+\eta}` the SDEs of
``dpmpp_2m_sde``'s ``eta``; SA-Solver's :math:`\tau(t)` (Xue et al. 2023) is :math:`\eta = \tau^2`.  With
:math:`K(\lambda) = \varphi(\bar\sigma_t)/\varphi(\bar\sigma(\lambda))` the step from s to t is exactly

.. math:: x_t = \frac{\alpha_t}{\alpha_s}K(\lambda_s)\,x_s + \alpha_t\int_{\lambda_s}^{\lambda_t}\hat x_0\,dK
          + \sigma_t\sqrt{1 - e^{2(\lambda_t-\lambda_s)}K(\lambda_s)^2}\;z .

The multistep methods replace :math:`\hat x_0` by the polynomial through the last predictions, in
:math:`\lambda` or in :math:`\bar\sigma` (the ER-SDE paper's Taylor expansion), and integrate it against dK:
its moments :math:`\mu_k = \int_0^1 r^k\,dK = 1 - k\int_0^1 r^{k-1}K\,dr` (:math:`\mu_0 = 1 - K(0)`) come from
Gauss-Legendre quadrature on the host, in the plan, on panels over which :math:`\log K` changes by at most one and
split at the noise scale's kinks.  The noise is the step's Brownian increment (see :mod:`.stochastic`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..methods import choice_option, int_option, interval_option
from .base import Nodes, lagrange_weights
from .multistep_sde import _ExponentialSDE
from .stochastic import register_stochastic

__all__ = ["NOISE_SCALES", "ERSDESolver", "SASolver", "noise_scale_moments"]

_GAUSS = np.polynomial.legendre.leggauss(20)


def _log1p_exp(a: float) -> float:
    return a + math.log1p(math.exp(-a)) if a > 0 else math.log1p(math.exp(a))


#: ER-SDE's noise scale functions, as :math:`\log\varphi(\bar\sigma)` (names of the paper's appendix; ``er5`` is its default).
NOISE_SCALES: dict[str, Callable[[float], float]] = {
    "ode": math.log,
    "sde": lambda s: 2.0 * math.log(s),
    "er1": lambda s: math.log(s) + math.log(math.exp(-1.0 / s) + 10.0),  # sigma (e^{-1/sigma} + 10)
    "er2": lambda s: 1.5 * math.log(s),  # sigma^1.5
    "er3": lambda s: 2.5 * math.log(s),  # sigma^2.5
    "er4": lambda s: 0.9 * math.log(s) + math.log(math.log1p(100.0 * s**1.5) / math.log(10.0)),  # sigma^0.9 log10(1 + 100 sigma^1.5)
    "er5": lambda s: math.log(s) + math.log(10.0) + _log1p_exp(s**0.3 - math.log(10.0)),  # sigma (e^{sigma^0.3} + 10)
}


def noise_scale_moments(log_phi: Callable[[float], float], lam_s: float, lam_t: float, k: int, *,
                        variable: str = "lambda", kinks: Sequence[float] = ()) -> tuple[float, list[float]]:
    r""":math:`K(\lambda_s) = \varphi_t/\varphi_s` and the moments :math:`\mu_0..\mu_{k-1}` of dK over a step, in
    :math:`r\in[0, 1]` along ``variable`` (``"lambda"`` or ``"sigma"``, :math:`\bar\sigma = e^{-\lambda}`).

    Args:
        log_phi: :math:`\log\varphi` as a function of :math:`\lambda` (up to a constant).
        lam_s, lam_t: the step's log-SNRs, :math:`\lambda_s < \lambda_t`.
        k: how many moments.
        variable: the variable the step's polynomial is linear in.
        kinks: log-SNRs where :math:`\log\varphi` has a kink (the quadrature splits there).
    """
    if variable == "lambda":
        lam_of = lambda r: lam_s + r * (lam_t - lam_s)  # noqa: E731
        r_of = lambda lam: (lam - lam_s) / (lam_t - lam_s)  # noqa: E731
    else:
        s_s, s_t = math.exp(-lam_s), math.exp(-lam_t)
        lam_of = lambda r: -math.log(s_s + r * (s_t - s_s))  # noqa: E731
        r_of = lambda lam: (math.exp(-lam) - s_s) / (s_t - s_s)  # noqa: E731
    end = log_phi(lam_t)
    log_k0 = end - log_phi(lam_s)
    panels = min(64, 1 + int(abs(log_k0)))
    cuts = sorted({j / panels for j in range(panels + 1)} | {r_of(lam) for lam in kinks if lam_s < lam < lam_t})
    integrals = [0.0] * k  # int_0^1 r^j K dr
    for a, b in zip(cuts[:-1], cuts[1:]):
        for x, w in zip(*_GAUSS):
            r = a + (b - a) * (x + 1.0) / 2.0
            value = w * (b - a) / 2.0 * math.exp(end - log_phi(lam_of(r)))
            for j in range(k):
                integrals[j] += value * r**j
    return math.exp(log_k0), [-math.expm1(log_k0)] + [1.0 - j * integrals[j - 1] for j in range(1, k)]


class _Extended(_ExponentialSDE):
    """:class:`.multistep_sde._ExponentialSDE`'s loop with the plan of the module docstring; subclasses give the noise scale."""

    variable: ClassVar[str] = "lambda"
    corrector_points: ClassVar[int] = 0
    structure = ("terms", "noise_span")

    def scale(self, nodes: Nodes) -> tuple[Callable[[float], float], tuple[float, ...]]:
        """:math:`\\log\\varphi` as a function of :math:`\\lambda` on this solve's process, and its kinks."""
        raise NotImplementedError

    def noise_window(self, nodes: Nodes, steps: int, kinks: tuple[float, ...]) -> Callable[[int], tuple[int, int]]:
        """The nodes between which step i draws its noise: the whole step, unless the noise scale is noise-free on part of it."""
        return lambda i: (i, i + 1)

    def _positions(self, nodes: Nodes, i: int, points: Sequence[int]) -> list[float]:
        v = nodes.lam if self.variable == "lambda" else [math.exp(-lam) for lam in nodes.lam]
        return [(v[p] - v[i]) / (v[i + 1] - v[i]) for p in points]

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        r"""Per step :math:`x_t = c_x x_s + c_z z + \sum_j w_j m_j` (``terms`` predictions, newest first) and the
        corrector's weights (the new prediction's first; zero on the last step)."""
        log_phi, kinks = self.scale(nodes)
        width = max(self.corrector_points, 1)
        plan: dict[str, list] = {"c_x": [], "c_z": [], "w": [], "terms": [], "wc": [], "noise_span": []}
        window = self.noise_window(nodes, steps, kinks)
        for i in range(steps):
            plan["noise_span"].append(window(i))
            lam_s, lam_t = nodes.lam[i], nodes.lam[i + 1]
            history = list(range(i, i - self._points(i, steps), -1))
            corrector = [i + 1] + list(range(i, max(i - self.corrector_points + 1, -1), -1))
            corrected = self.corrector_points and i < steps - 1
            k = max(len(history), len(corrector) if corrected else 0)
            ratio, moments = noise_scale_moments(log_phi, lam_s, lam_t, k, variable=self.variable, kinks=kinks)
            alpha_t = nodes.alpha[i + 1]
            wp = lagrange_weights(self._positions(nodes, i, history), moments)
            wc = lagrange_weights(self._positions(nodes, i, corrector), moments) if corrected else []
            plan["c_x"].append(alpha_t / nodes.alpha[i] * ratio)
            # 1 - (e^h K(lambda_s))^2 >= 0 up to rounding (phi / sigma non-decreasing)
            plan["c_z"].append(nodes.sigma[i + 1] * math.sqrt(max(-math.expm1(2.0 * (lam_t - lam_s + math.log(ratio))), 0.0)))
            plan["terms"].append(len(wp))
            plan["w"].append([alpha_t * w for w in wp] + [0.0] * (self.predictor_points - len(wp)))
            plan["wc"].append([alpha_t * w for w in wc] + [0.0] * (width - len(wc)))
        return plan


class ERSDESolver(_Extended):
    r"""ER-SDE-Solver (Cui et al. 2023): the multistep solver of the extended reverse SDE with noise scale
    :math:`\varphi` (module docstring); one NFE per step.

    Options: ``noise_scale`` (the paper's functions: ``"er5"`` :math:`\bar\sigma(e^{\bar\sigma^{0.3}} + 10)`, its
    default, ``"er1"``-``"er4"``, ``"sde"`` :math:`\bar\sigma^2` and ``"ode"`` :math:`\bar\sigma`), ``order`` (1-3: the
    points of the polynomial), ``variable`` (``"sigma"``, the paper's, or ``"lambda"``), ``lower_order_final``.
    """

    drift_order = 3.0  # the default order's
    options = {
        "noise_scale": choice_option("er5", tuple(NOISE_SCALES), "the noise scale function phi(sigma/alpha) (ER-SDE's; 'ode' sigma, 'sde' sigma^2)"),
        "order": int_option(3, "points of the data-prediction polynomial, 1-3", maximum=3),
        "variable": choice_option("lambda", ("lambda", "sigma"), "the polynomial's variable: the log-SNR or sigma/alpha (the paper's)"),
        "lower_order_final": _ExponentialSDE.options["lower_order_final"],
    }

    def __init__(self, *, noise_scale: str = "er5", order: int = 3, variable: str = "lambda", lower_order_final: bool = True) -> None:
        super().__init__(eta=0.0, lower_order_final=lower_order_final)
        self.noise_scale, self.predictor_points, self.variable = noise_scale, order, variable

    @property
    def noisy(self) -> bool:
        return self.noise_scale != "ode"

    def scale(self, nodes: Nodes) -> tuple[Callable[[float], float], tuple[float, ...]]:
        log_phi = NOISE_SCALES[self.noise_scale]
        return (lambda lam: log_phi(math.exp(-lam))), ()



class SASolver(_Extended):
    r"""SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector with :math:`\eta = \tau^2` on a window of
    time, :math:`\tau(t) = \tau` for ``tau_tmin`` :math:`\le t/T \le` ``tau_tmax`` and 0 elsewhere (diffusers'
    default window, 0.2-0.8); one NFE per step.

    The predictor integrates the polynomial through the last ``predictor_order`` predictions, the corrector the
    one through the prediction at the predicted state (noise included) and the last ``corrector_order - 1``,
    with the same noise; the new prediction is the next step's.  The last step is not corrected.

    Raises:
        ValueError: if ``tau_tmin > tau_tmax``.
    """

    drift_order = 3.0  # the default corrector's
    corrected = True
    options = {
        "tau": interval_option(1.0, "the noise strength tau in the window (eta = tau^2; 1: the reverse SDE there)"),
        "tau_tmin": interval_option(0.2, "the window's start, as a fraction of T", high=1.0),
        "tau_tmax": interval_option(0.8, "the window's end, as a fraction of T", high=1.0),
        "predictor_order": int_option(3, "points of the predictor's polynomial, 1-4", maximum=4),
        "corrector_order": int_option(3, "points of the corrector's polynomial (the new one included), 1-4", maximum=4),
        "lower_order_final": _ExponentialSDE.options["lower_order_final"],
    }

    def __init__(self, *, tau: float = 1.0, tau_tmin: float = 0.2, tau_tmax: float = 0.8, predictor_order: int = 3,
                 corrector_order: int = 3, lower_order_final: bool = True) -> None:
        if tau_tmin > tau_tmax:
            raise ValueError(
                f"sa_solver: options 'tau_tmin' and 'tau_tmax' expected tau_tmin <= tau_tmax, got tau_tmin={tau_tmin!r} > "
                f"tau_tmax={tau_tmax!r}. Fix: swap them (tau = 0 for no noise)."
            )
        super().__init__(eta=tau**2, lower_order_final=lower_order_final)
        self.window = (tau_tmin, tau_tmax)
        self.predictor_points, self.corrector_points = predictor_order, corrector_order

    @property
    def noisy(self) -> bool:
        return self.eta > 0.0 and self.window[1] > self.window[0]

    def scale(self, nodes: Nodes) -> tuple[Callable[[float], float], tuple[float, ...]]:
        sde, eta = nodes.sde, self.eta
        ends = torch.tensor([f * sde.T for f in self.window], dtype=torch.float64).clamp(min=sde.t_min)
        lam_hi, lam_lo = sde.log_snr(ends).tolist()  # log-SNR falls with t
        return (lambda lam: -lam - eta * (min(max(lam, lam_lo), lam_hi) - lam_lo)), (lam_lo, lam_hi)

    def noise_window(self, nodes: Nodes, steps: int, kinks: tuple[float, ...]) -> Callable[[int], tuple[int, int]]:
        """A step across an edge of the window draws its noise from the path over the part inside the window only
        (new nodes at the edges), where all of the step's noise comes from: pathwise right, so the strong order holds."""
        lo, hi = kinks
        lam = nodes.lam
        crossing = [i for i in range(steps) if lam[i] < lo < lam[i + 1] or lam[i] < hi < lam[i + 1]]
        if not crossing:
            return lambda i: (i, i + 1)
        edge_lo, edge_hi = nodes.extend([lo, hi])

        def span(i: int) -> tuple[int, int]:
            if lam[i + 1] <= lo or lam[i] >= hi:  # no noise on this step
                return (i, i + 1)
            return (edge_lo if lam[i] < lo else i, edge_hi if lam[i + 1] > hi else i + 1)

        return span


register_stochastic("er_sde", ERSDESolver, "ER-SDE-Solver: multistep on the extended reverse SDE with noise scale phi (default: the paper's er5)")
register_stochastic("sa_solver", SASolver, "SA-Solver: stochastic Adams predictor-corrector, tau on a window of t (0.2-0.8 T)")
