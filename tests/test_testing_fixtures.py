"""scoreflow.testing.fixtures as a user loads them, and the documented example test file."""

from pathlib import Path

import torch

# Import what the in-process runs import, so that pytester's module snapshot keeps them
# (numpy's extension modules cannot be loaded twice in one process).
import scoreflow.testing.fixtures  # noqa: F401
import scoreflow.testing.strategies  # noqa: F401

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "test_my_sampler.py"


def test_fixtures_load_from_a_users_conftest(pytester):
    pytester.makeconftest('pytest_plugins = ["scoreflow.testing.fixtures"]')
    pytester.makepyfile(
        """
        import pytest
        import torch

        def test_generator_is_seeded(torch_generator, scoreflow_seed):
            expected = torch.randn(3, generator=torch.Generator().manual_seed(scoreflow_seed))
            assert scoreflow_seed == 0 and torch.equal(torch.randn(3, generator=torch_generator), expected)

        def test_float64_is_default_inside(float64):
            assert float64 is torch.float64 and torch.ones(1).dtype is torch.float64

        def test_float64_is_restored_after():
            assert torch.get_default_dtype() is torch.float32

        def test_each_real_dtype(real_dtype):
            assert real_dtype in (torch.float32, torch.float64)

        class TestReseeded:
            @pytest.fixture
            def scoreflow_seed(self):
                return 7

            def test_override(self, torch_generator):
                assert torch.equal(torch.randn(2, generator=torch_generator), torch.randn(2, generator=torch.Generator().manual_seed(7)))
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    assert torch.get_default_dtype() is torch.float32


def test_the_documented_example_file_passes(pytester):
    pytester.makepyfile(test_user_sampler=EXAMPLE.read_text())
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=9)


def test_the_example_catches_a_sampler_with_the_wrong_score_sign(pytester):
    buggy = EXAMPLE.read_text().replace("- 0.5 * sde.diffusion(t) ** 2 * score", "+ 0.5 * sde.diffusion(t) ** 2 * score")
    assert buggy != EXAMPLE.read_text()
    pytester.makepyfile(test_user_sampler=buggy)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "flow_map and gaussian2d")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*measured: max |x - x_ref|*"])


def test_the_docs_show_the_example_file_verbatim():
    docs = (EXAMPLE.parents[1] / "docs" / "testing.md").read_text()
    assert "```python\n" + EXAMPLE.read_text() + "```" in docs
