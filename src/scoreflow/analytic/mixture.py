r"""Gaussian mixtures with full covariances, and their exact perturbed laws under any forward SDE.

Each covariance is stored by its eigendecomposition :math:`C_k = U_k\,\mathrm{diag}(\lambda_k)\,U_k^\top`.
Under :math:`x_t = \alpha x_0 + \sigma\varepsilon` component k becomes
:math:`N(\alpha\mu_k,\; U_k\,\mathrm{diag}(\alpha^2\lambda_k + \sigma^2)\,U_k^\top)`: the eigenvectors do
not move with t, so densities, scores and samples at any (batched) time cost no new factorization.
"""

from __future__ import annotations

import math

import torch

from .._checks import (
    check_batch, check_float_dtype, check_generator, check_instance, check_int, check_positive, check_real, check_time,
    is_int, resolve_t_min,
)
from .._tensor import ScoreFn, TimeLike, batch_time, right_pad
from ..sde import ForwardSDE, check_sde
from . import conditioning
from .flow import FLOW_ATOL, FLOW_RTOL, ExactConsistencyFunction, solve_flow_map

__all__ = ["GaussianMixture", "AnalyticScore", "AnalyticVelocity"]



def _law_dtype(fn: str, **values) -> torch.dtype:
    """The widest floating dtype of the tensors among ``values`` (the default dtype if none is one): float32 or float64,
    in which the covariances' eigendecomposition runs (torch has none in half precision)."""
    dtype = None
    for v in values.values():
        if torch.is_tensor(v) and v.is_floating_point():
            dtype = v.dtype if dtype is None else torch.promote_types(dtype, v.dtype)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        names = [f"'{k}'" for k, v in values.items() if torch.is_tensor(v) and v.dtype == dtype]
        raise TypeError(
            f"{fn}: argument{'s' * (len(names) > 1)} {' and '.join(names)} expected float32 or float64, got dtype {dtype}. "
            "Fix: build the law in float32 or float64 (its eigendecomposition has no half-precision kernel); "
            "law.to(dtype) converts it after."
        )
    return dtype


def _as_float_tensor(fn: str, name: str, value, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as an ``ndim``-D finite tensor in ``dtype`` (numbers converted straight to it, never through float32)."""
    if torch.is_tensor(value) and (value.is_complex() or value.dtype == torch.bool):  # .to(dtype) would drop or cast
        raise TypeError(f"{fn}: argument '{name}' expected a real {ndim}-D tensor, got dtype {value.dtype}.")
    try:
        v = torch.as_tensor(value, dtype=dtype) if not torch.is_tensor(value) else value.to(dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{fn}: argument '{name}' expected a {ndim}-D tensor or nested sequence of numbers, got {type(value).__name__} {value!r}.") from None
    if v.ndim != ndim:
        raise ValueError(f"{fn}: argument '{name}' expected a {ndim}-D tensor, got shape {tuple(v.shape)}.")
    if not torch.isfinite(v).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite values.")
    return v


def _check_times(fn: str, name: str, t, sde: ForwardSDE) -> TimeLike:
    """``t``, a finite real number or a finite real tensor of one or ``(B,)`` times, in [0, T]; returned as given.

    A tensor of times may exceed T by its dtype's rounding of T (float32(42.4056) > 42.4056 on
    ``EDMSDE(sigma_max=42.4056)``: a float32 grid or sampler starts there): such times are in range.
    """
    if not torch.is_tensor(t):
        t = check_real(fn, name, t)
    elif t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{fn}: argument '{name}' expected real times, got a tensor of dtype {t.dtype}.")
    elif t.ndim > 1:
        raise ValueError(f"{fn}: argument '{name}' expected a time or a (B,) tensor of times, got shape {tuple(t.shape)}.")
    elif not bool(torch.isfinite(t).all()):
        raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite times.")
    lo, hi = (float(t.min()), float(t.max())) if torch.is_tensor(t) else (t, t)
    # T as the times' dtype holds it (a float is T itself): what a time at T is in that dtype
    T_held = float(torch.tensor(sde.T, dtype=t.dtype)) if torch.is_tensor(t) and t.is_floating_point() else sde.T
    if lo < 0.0 or hi > max(sde.T, T_held):
        # a tensor's own repr rounds to 4 digits: a time beyond T by a rounding would print as T
        got = f"times from {lo!r} to {hi!r}" if torch.is_tensor(t) else repr(t)
        raise ValueError(f"{fn}: argument '{name}' expected times in [0, T={sde.T:g}], got {got}.")
    return t


def _check_event_shape(fn: str, event_shape, dim: int) -> tuple[int, ...]:
    """``event_shape`` (None for ``(dim,)``) as a tuple of ints >= 1 whose product is ``dim``."""
    if event_shape is None:
        return (dim,)
    if not isinstance(event_shape, (tuple, list, torch.Size)) or not all(is_int(n) for n in event_shape):
        raise TypeError(f"{fn}: argument 'event_shape' expected a tuple of ints, e.g. (1, 2, 2), got {type(event_shape).__name__} {event_shape!r}.")
    if not event_shape or min(event_shape) < 1 or math.prod(event_shape) != dim:
        raise ValueError(
            f"{fn}: argument 'event_shape' expected a shape of sizes >= 1 with {dim} elements (the dimension of the means), "
            f"got {tuple(event_shape)}."
        )
    return tuple(int(n) for n in event_shape)


class GaussianMixture:
    r"""A mixture :math:`\sum_k w_k N(\mu_k, C_k)` on vectors of dimension D (data of any shape ``event_shape``).

    Args:
        weights: ``(K,)`` non-negative mixture weights (normalized here).
        means: ``(K, D)`` component means.
        covs: ``(K, D, D)`` symmetric positive-definite covariances.
        event_shape: shape ``D_shape`` of one data point (product D); defaults to ``(D,)``.

    The law's dtype is the widest floating dtype of the tensors among the three (numbers and sequences of numbers
    take it; the default dtype if no argument is a floating tensor).

    Raises:
        ValueError: on mismatched shapes, negative or all-zero weights, or a covariance that is
            not symmetric positive definite.
    """

    def __init__(self, weights, means, covs, *, event_shape: tuple[int, ...] | None = None) -> None:
        fn = type(self).__name__
        # the widest of the three: float64 means and covs are never rounded to the float32 of a list of weights
        dtype = _law_dtype(fn, weights=weights, means=means, covs=covs)
        weights = _as_float_tensor(fn, "weights", weights, 1, dtype)
        means = _as_float_tensor(fn, "means", means, 2, dtype)
        covs = _as_float_tensor(fn, "covs", covs, 3, dtype)
        k, d = means.shape
        if weights.shape[0] != k or covs.shape != (k, d, d) or k == 0 or d == 0:
            raise ValueError(
                f"{fn}: expected weights (K,), means (K, D), covs (K, D, D) with one K >= 1 and D >= 1; got weights "
                f"{tuple(weights.shape)}, means {tuple(means.shape)}, covs {tuple(covs.shape)}."
            )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"{fn}: argument 'weights' expected non-negative values with a positive sum, got {weights.tolist()}.")
        if not torch.allclose(covs, covs.transpose(-1, -2), rtol=1e-5, atol=1e-8 * float(covs.abs().max())):
            raise ValueError(f"{fn}: argument 'covs' expected symmetric matrices.")
        eigvals, eigvecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(-1, -2)))
        if (eigvals <= 0).any():
            raise ValueError(
                f"{fn}: argument 'covs' expected positive-definite matrices, got smallest eigenvalue {float(eigvals.min()):.3g}."
            )
        weights = weights / weights.max()  # first: a sum of huge weights (2 x 1e308) overflows to inf
        self._init(weights / weights.sum(), means, eigvecs, eigvals, _check_event_shape(fn, event_shape, d))

    def _init(self, weights, means, eigvecs, eigvals, event_shape) -> None:
        self.weights = weights  # (K,), or (*b, K) for a posterior batched over observations
        self.means = means  # (*b, K, D)
        self.eigvecs = eigvecs  # (K, D, D), columns are eigenvectors
        self.eigvals = eigvals  # (*b, K, D)
        self.event_shape = tuple(event_shape)
        if math.prod(self.event_shape) != self.dim:
            raise ValueError(f"{type(self).__name__}: event_shape {self.event_shape} does not have {self.dim} elements.")

    @classmethod
    def _from_eig(cls, weights, means, eigvecs, eigvals, event_shape) -> GaussianMixture:
        law = cls.__new__(cls)
        GaussianMixture._init(law, weights, means, eigvecs, eigvals, event_shape)
        return law

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def n_components(self) -> int:
        return self.weights.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch shape of the parameters: ``()`` for a data law, ``(B,)`` for a marginal at ``(B,)`` times."""
        return tuple(self.means.shape[:-2])

    @property
    def covs(self) -> torch.Tensor:
        """Covariances :math:`U \\mathrm{diag}(\\lambda) U^\\top`, shape ``(*b, K, D, D)``."""
        return (self.eigvecs * self.eigvals.unsqueeze(-2)) @ self.eigvecs.transpose(-1, -2)

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the mixture, shape ``(*b, D)``."""
        return torch.einsum("...k,...kd->...d", self.weights, self.means)

    @property
    def covariance(self) -> torch.Tensor:
        """Covariance of the mixture (law of total covariance), shape ``(*b, D, D)``."""
        m = self.mean
        dev = self.means - m.unsqueeze(-2)
        within = torch.einsum("...k,...kde->...de", self.weights, self.covs)
        between = torch.einsum("...k,...kd,...ke->...de", self.weights, dev, dev)
        return within + between

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> GaussianMixture:
        """Return a copy with parameters in ``dtype`` (a floating one) on ``device``."""
        if dtype is not None:
            check_float_dtype(f"{type(self).__name__}.to", "dtype", dtype)
        conv = lambda v: v.to(dtype=dtype, device=device)  # noqa: E731
        return self._from_eig(
            conv(self.weights), conv(self.means), conv(self.eigvecs), conv(self.eigvals), self.event_shape
        )

    # ------------------------------------------------------------------ densities
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x):  # (a type test, no read: this runs at every evaluation of an analytic score)
            raise TypeError(f"{type(self).__name__}: expected x a tensor of shape (B, *{self.event_shape}), got {type(x).__name__}.")
        n_event = len(self.event_shape)
        if tuple(x.shape[x.ndim - n_event :]) != self.event_shape or x.ndim != n_event + 1:
            raise ValueError(
                f"{type(self).__name__}: expected x of shape (B, *{self.event_shape}), got {tuple(x.shape)}."
            )
        if not x.is_floating_point():  # (a dtype test, no read) an integer x had its log-densities and scores truncated
            raise TypeError(f"{type(self).__name__}: expected x a floating-point tensor, got dtype {x.dtype}. Fix: x.double().")
        return x.reshape(x.shape[0], self.dim)

    def _component_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component log-weights plus log-densities ``(B, K)`` and whitened residuals ``z/lambda`` ``(B, K, D)``."""
        xf = self._flat(x).to(self.means.dtype)
        diff = xf.unsqueeze(-2) - self.means  # (B, K, D)
        # coordinates in each eigenbasis, as one batched matmul over components (K, B, D) @ (K, D, D)
        z = (diff.transpose(0, 1) @ self.eigvecs).transpose(0, 1)
        lam = self.eigvals.unsqueeze(-3) if self.eigvals.ndim == 2 else self.eigvals  # (B or 1, K, D)
        maha = (z**2 / lam).sum(-1)
        logdet = torch.log(self.eigvals).sum(-1)  # (*b, K)
        log_comp = torch.log(self.weights) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return log_comp, z / lam

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density at ``x`` of shape ``(B, *event_shape)`` (log-sum-exp over components); shape ``(B,)``."""
        log_comp, _ = self._component_terms(x)
        return torch.logsumexp(log_comp, dim=-1).to(x.dtype)

    def grad_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Score :math:`\nabla_x \log p(x) = -\sum_k r_k(x)\, C_k^{-1}(x - \mu_k)`, shaped like ``x``."""
        log_comp, white = self._component_terms(x)
        resp = torch.softmax(log_comp, dim=-1)  # (B, K)
        back = (white.transpose(0, 1) @ self.eigvecs.transpose(1, 2)).transpose(0, 1)  # (B, K, D)
        grad = -(resp.unsqueeze(-1) * back).sum(dim=1)
        return grad.to(x.dtype).reshape(x.shape)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities ``(B, K)`` of each point."""
        log_comp, _ = self._component_terms(x)
        return torch.softmax(log_comp, dim=-1)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples, shape ``(n, *event_shape)``; for a batched law ``n`` must equal its batch size."""
        check_int(type(self).__name__ + ".sample", "n", n)
        check_generator(type(self).__name__ + ".sample", generator)
        if self.batch_shape and self.batch_shape != (n,):
            raise ValueError(f"{type(self).__name__}.sample: a law batched over {self.batch_shape} draws n={self.batch_shape[0]} samples, got n={n}.")
        device = self.means.device
        if self.weights.ndim == 1:
            k = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator).to(device)
        else:  # one draw per row of a law batched over observations
            k = torch.multinomial(self.weights.float(), 1, generator=generator).reshape(n).to(device)
        eps = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype, device=device)
        idx = torch.arange(n, device=device)
        means = self.means[idx, k] if self.batch_shape else self.means[k]
        lam = self.eigvals[idx, k] if self.batch_shape else self.eigvals[k]
        x = means + torch.einsum("nde,ne->nd", self.eigvecs[k], lam.sqrt() * eps)
        return x.reshape((n, *self.event_shape))

    # ------------------------------------------------------------------ diffusion
    def marginal(self, sde: ForwardSDE, t: TimeLike) -> GaussianMixture:
        r"""The exact law of :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon` with :math:`x_0` from this law.

        A scalar ``t`` gives an unbatched law; a ``(B,)`` tensor gives a law batched over B times whose
        ``log_prob``, ``grad_log_prob`` and ``sample`` treat row i at time ``t[i]``.

        Raises:
            TypeError, ValueError: for an ``sde`` that is not a ForwardSDE, or times that are not finite, real, scalar
                or ``(B,)`` and in [0, T] (beyond them a process's law is extrapolated: NaN for VP below 0).
        """
        fn = f"{type(self).__name__}.marginal"
        check_sde(fn, sde)
        _check_times(fn, "t", t, sde)
        return self._marginal(sde, t)

    def _marginal(self, sde: ForwardSDE, t: TimeLike) -> GaussianMixture:
        """:meth:`marginal` without its checks (the analytic scores' path, at every evaluation)."""
        t = torch.as_tensor(t, dtype=self.means.dtype, device=self.means.device)
        alpha, sigma = sde.marginal(t)
        a = alpha.reshape(alpha.shape + (1, 1))
        s = sigma.reshape(sigma.shape + (1, 1))
        return self._from_eig(self.weights, a * self.means, self.eigvecs, a**2 * self.eigvals + s**2, self.event_shape)

    def posterior(self, sde: ForwardSDE, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Exact :math:`(E[x_0 \mid x_t = x],\ \nabla_x\log p_t(x))` at a scalar or ``(B,)`` time, both shaped like ``x``.

        Per component, :math:`E[x_0|x, k] = \mu_k + C_k\alpha(\alpha^2 C_k + \sigma^2 I)^{-1}(x - \alpha\mu_k)`, averaged
        with the posterior responsibilities: finite at :math:`\alpha = 0` (the mean) and at :math:`\sigma = 0` (x).

        Raises:
            TypeError, ValueError: as :meth:`marginal`, and for an ``x`` that is not a floating ``(B, *event_shape)``
                tensor or a ``t`` that is not a scalar or ``(B,)``.
        """
        fn = f"{type(self).__name__}.posterior"
        check_sde(fn, sde)
        self._flat(x)
        _check_times(fn, "t", check_time(fn, "t", t, x), sde)
        return self._posterior(sde, x, t)

    def _posterior(self, sde: ForwardSDE, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`posterior` without its checks (the analytic velocity's path, at every evaluation)."""
        t = torch.as_tensor(t, dtype=self.means.dtype, device=self.means.device)
        law = self._marginal(sde, t)
        log_comp, white = law._component_terms(x)  # white: C_t^{-1}(x - alpha mu) in each eigenbasis
        resp = torch.softmax(log_comp, dim=-1).unsqueeze(-1)  # (B, K, 1)
        alpha = sde.marginal(t)[0].reshape(t.shape + (1, 1))
        eigvecs_t = self.eigvecs.transpose(1, 2)
        pull = (white * (alpha * self.eigvals)).transpose(0, 1) @ eigvecs_t  # (K, B, D)
        x0 = (resp * (self.means + pull.transpose(0, 1))).sum(dim=1)
        score = -(resp * (white.transpose(0, 1) @ eigvecs_t).transpose(0, 1)).sum(dim=1)
        return x0.to(x.dtype).reshape(x.shape), score.to(x.dtype).reshape(x.shape)

    def score(self, sde: ForwardSDE) -> ScoreFn:
        r"""Exact score :math:`s(x, t) = \nabla_x \log p_t(x)` of this law diffused by ``sde``, as a callable.

        Under a process that ends in pure noise (:attr:`~scoreflow.ForwardSDE.pure_noise_at_T`, e.g. a flow path)
        this is :meth:`velocity`'s model, which also carries the exact flow velocity, so it can be integrated from T.
        """
        check_sde(f"{type(self).__name__}.score", sde)
        return AnalyticVelocity(self, sde) if sde.pure_noise_at_T else AnalyticScore(self, sde)

    def velocity(self, sde: ForwardSDE) -> AnalyticVelocity:
        r"""The exact flow velocity :math:`u(x, t) = \dot\alpha E[x_0|x_t] + \dot\sigma E[\varepsilon|x_t]` as a model.

        Under :class:`scoreflow.RectifiedFlow` this is :math:`E[\varepsilon - x_0 \mid x_t = x]`.  The model returns
        the exact score when called and the velocity from ``predict(x, t)`` (``prediction == "flow_velocity"``),
        as :func:`scoreflow.score_from_flow_velocity` models do.
        """
        return AnalyticVelocity(self, sde)

    def flow_map(
        self, sde: ForwardSDE, x: torch.Tensor, t_from: TimeLike, t_to: TimeLike,
        *, rtol: float = FLOW_RTOL, atol: float = FLOW_ATOL,
    ) -> torch.Tensor:
        """The probability-flow map of this law from ``t_from`` to ``t_to`` (scalars or ``(B,)``): a float64 DOP853
        solve of the exact flow velocity (:meth:`velocity`) at ``rtol``/``atol`` (:func:`scoreflow.analytic.flow.solve_flow_map`)."""
        fn = f"{type(self).__name__}.flow_map"
        t_from, t_to = self._check_flow_map(fn, sde, x, t_from, t_to)
        rtol, atol = check_positive(fn, "rtol", rtol), check_positive(fn, "atol", atol)
        law = self.to(torch.float64, "cpu")  # the solve's states are on the host, whatever the device of x or the law
        return solve_flow_map(law.velocity(sde).predict, x, t_from, t_to, rtol=rtol, atol=atol)

    @staticmethod
    def _check_flow_map(
        fn: str, sde: ForwardSDE, x: torch.Tensor, t_from: TimeLike, t_to: TimeLike
    ) -> tuple[TimeLike, TimeLike]:
        """The arguments of :meth:`flow_map`: a process, a batch x and times (scalars or ``(B,)``) in [0, T].

        A tensor of times beyond T by its dtype's rounding of T (see :func:`_check_times`) is clamped to T.

        Returns:
            ``(t_from, t_to)``, a tensor of times in float64 and clamped to [0, T].

        Raises:
            TypeError, ValueError: naming the argument (before: Python's and torch's errors, a scipy solve that
                failed or never ended, and times beyond T extrapolated silently).
        """
        check_sde(fn, sde)
        check_batch(fn, "x", x)
        times = []
        for name, t in (("t_from", t_from), ("t_to", t_to)):
            t = _check_times(fn, name, check_time(fn, name, t, x), sde)
            times.append(t.to(torch.float64).clamp(0.0, sde.T) if torch.is_tensor(t) else t)
        return times[0], times[1]

    def flow_description(self, rtol: float = FLOW_RTOL, atol: float = FLOW_ATOL) -> str:
        """How :meth:`flow_map` is computed: a solve, with its tolerances."""
        return f"scipy DOP853 solve of the probability-flow ODE with the exact velocity, rtol={rtol:g}, atol={atol:g}"

    def consistency_function(
        self, sde: ForwardSDE, *, t_min: float | None = None, rtol: float = FLOW_RTOL, atol: float = FLOW_ATOL
    ) -> ExactConsistencyFunction:
        r"""The exact consistency function :math:`f^*(x, t) = \Phi_{t\to t_{min}}(x)` of this law under ``sde``.

        It sends every point of a probability-flow trajectory to the trajectory's end at ``t_min``
        (:math:`f^*(x, t_{min}) = x`): closed-form for a :class:`Gaussian`, a tight DOP853 solve for a
        mixture (see :meth:`flow_map`; ``rtol``/``atol`` are its tolerances).

        Args:
            sde: the forward SDE.
            t_min: the end of every trajectory (default ``sde.t_min``).
            rtol, atol: tolerances of a mixture's solve.

        Returns:
            A callable ``f(x, t)`` with ``t`` a scalar or ``(B,)`` tensor of times in ``[t_min, T]``.

        Raises:
            TypeError, ValueError: for a wrong ``sde``, ``t_min`` outside ``(0, T)`` or tolerances that are not > 0.
        """
        fn = "consistency_function"
        check_sde(fn, sde)
        t_min = resolve_t_min(fn, sde, t_min)
        rtol, atol = check_positive(fn, "rtol", rtol), check_positive(fn, "atol", atol)

        def flow(x: torch.Tensor, t: torch.Tensor, t_to: float) -> torch.Tensor:
            return self.flow_map(sde, x, t, t_to, rtol=rtol, atol=atol)

        return ExactConsistencyFunction(flow, sde, t_min, self.flow_description(rtol, atol))

    # ------------------------------------------------------------------ conditioning
    def condition(self, mask: torch.Tensor, values) -> GaussianMixture:
        """The exact law of the unobserved coordinates given ``values`` where ``mask`` is True (see :func:`scoreflow.analytic.condition`)."""
        return conditioning.condition(self, mask, values)

    def condition_linear(self, A, y, noise_std) -> GaussianMixture:
        """The exact posterior given :math:`y = A x + n` on flattened x (see :func:`scoreflow.analytic.condition_linear`)."""
        return conditioning.condition_linear(self, A, y, noise_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim}, batch_shape={self.batch_shape}, dtype={self.means.dtype})"


class AnalyticScore:
    """The exact score of a law under an SDE, callable as ``score(x, t)``.

    Calls with one shared time (the usual case inside a solver) build one marginal;
    per-sample times build a law batched over them.
    """

    #: declared, so that what reads a model's prediction (e.g. ``cfm_loss``) does not take it for a velocity
    prediction = "score"

    def __init__(self, law: GaussianMixture, sde: ForwardSDE) -> None:
        fn = type(self).__name__
        check_instance(fn, "law", law, GaussianMixture, "scoreflow.analytic.Gaussian(torch.zeros(2), torch.eye(2))")
        self.law, self.sde = law, check_sde(fn, sde)

    def __call__(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        return self.law._marginal(self.sde, self._time(x, t)).grad_log_prob(x)

    def _time(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """One shared time as a scalar (one marginal), per-sample times as ``(B,)`` (a batched law)."""
        conditioning.check_model_call(type(self).__name__, x, t)
        t = batch_time(t, x)
        return t[0] if bool((t == t[0]).all()) else t


class AnalyticVelocity(AnalyticScore):
    """The exact score of a law under a process (when called) and its exact flow velocity (``predict``)."""

    prediction = "flow_velocity"

    def __call__(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        return self.law._posterior(self.sde, x, self._time(x, t))[1]

    def predict(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        r""":math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon` with :math:`\hat\varepsilon = -\sigma s`.

        The rate :math:`\sigma\dot\sigma = \tfrac12 d\sigma^2/dt = \tfrac12(g^2 + 2f\sigma^2)` is :math:`g^2/2` where
        :math:`\sigma = 0` (t = 0 of VP, VE, EDM), at which :math:`\dot\sigma` is infinite (or 0/0): there u is the finite
        :math:`f x - \tfrac12 g^2 s` of the data law, not :math:`\infty \cdot 0`.
        """
        t = self._time(x, t)
        x0, score = self.law._posterior(self.sde, x, t)
        tb = batch_time(t, x)
        sigma = right_pad(self.sde.marginal(tb)[1], x)
        d_alpha, d_sigma = (right_pad(c, x) for c in self.sde.marginal_derivatives(tb))
        noise_rate = d_sigma * sigma
        if not bool((sigma > 0).all()):  # (one read, as _time's; g is computed only then: a path's costs two jvps)
            noise_rate = torch.where(sigma > 0, noise_rate, 0.5 * right_pad(self.sde.diffusion(tb), x) ** 2)
        return d_alpha * x0 - noise_rate * score
