"""pytest fixtures for numerical tests of score-based models: seeded generators and float64.

Load them from your ``conftest.py`` with ``pytest_plugins = ["scoreflow.testing.fixtures"]``
(or ``pytest -p scoreflow.testing.fixtures``).  They are opt-in rather than an auto-loaded
plugin, so installing scoreflow never changes other projects' test runs.  Needs pytest only.

- ``scoreflow_seed``: the seed (0); override this fixture to change every generator's seed.
- ``torch_generator``: a CPU ``torch.Generator`` seeded with ``scoreflow_seed``, fresh per test.
- ``float64``: makes float64 torch's default dtype during the test (restored after); yields it.
- ``real_dtype``: parametrizes a test over ``torch.float32`` and ``torch.float64``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

__all__ = ["scoreflow_seed", "torch_generator", "float64", "real_dtype"]


@pytest.fixture
def scoreflow_seed() -> int:
    """The seed of :func:`torch_generator`; override it in a conftest or module to reseed."""
    return 0


@pytest.fixture
def torch_generator(scoreflow_seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``scoreflow_seed``: each test draws the same numbers on every run."""
    return torch.Generator().manual_seed(scoreflow_seed)


@pytest.fixture
def float64() -> Iterator[torch.dtype]:
    """Run the test with ``torch.float64`` as the default dtype, restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def real_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """Each floating dtype scoreflow supports, one test run per dtype."""
    return request.param
