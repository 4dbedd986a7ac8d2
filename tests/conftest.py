import os

import pytest
import torch
from hypothesis import settings

# Two cores, many small tensors: one intra-op thread avoids oversubscription with xdist.
torch.set_num_threads(int(os.environ.get("SCOREFLOW_TEST_THREADS", "1")))

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
