"""Model factories for ``--model tests_module:factory`` in the CLI tests: ``factory(device) -> (score, sde)``."""

import torch

from scoreflow.testing import make_problem


def gaussian(device):
    """The exact score of the 2-D Gaussian problem in float32, as a user's float32 model would be."""
    problem = make_problem("gaussian2d", "vp", dtype=torch.float32)
    return problem.score, problem.sde


def flat_score(device):
    """A network that returns one value per sample, shape (B, 1): the score's shape check must catch it."""
    return (lambda x, t: x[:, :1]), make_problem("gaussian2d", "vp").sde


def not_a_pair(device):
    return "score"


def missing_checkpoint(device):
    raise FileNotFoundError("no checkpoint at weights/ema.pt")


def nan_for_single_items(device):
    """The 2-D Gaussian's score, except NaN for a batch of one item: with 3 samples in batches of 2 on 2 ranks,
    only rank 1 (which gets the single item) meets a non-finite score."""
    score, sde = gaussian(device)
    return (lambda x, t: score(x, t) * (float("nan") if x.shape[0] == 1 else 1.0)), sde


def _failing_for_single_items(error: type[BaseException], *args):
    """A factory of the 2-D Gaussian's score that raises ``error(*args)`` for a batch of one item: with 3 samples
    in batches of 2 on 2 ranks, only rank 1 (which gets the single item) fails, in the middle of its solve."""

    def factory(device):
        score, sde = gaussian(device)

        def failing(x, t):
            if x.shape[0] == 1:
                raise error(*args)
            return score(x, t)

        return failing, sde

    return factory


# Failures that main shows with their traceback (status 1), and Ctrl-C (one line, status 130).
runtime_error_for_single_items = _failing_for_single_items(RuntimeError, "CUDA error: an illegal memory access")
os_error_for_single_items = _failing_for_single_items(OSError, 5, "Input/output error", "weights/ema.pt")
assertion_error_for_single_items = _failing_for_single_items(AssertionError, "the model's cache is stale")
value_error_for_single_items = _failing_for_single_items(ValueError, "a check of the user's model")
interrupt_for_single_items = _failing_for_single_items(KeyboardInterrupt)
