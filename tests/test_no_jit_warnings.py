"""A flow path's first forward-mode derivative prints no ``torch.jit.script`` deprecation warning (issue 19's newcomer list).

torch scripts its forward-mode decompositions on the first ``torch.func.jvp`` of a process, so the check runs in a
fresh interpreter with warnings turned into errors.
"""

import subprocess
import sys

CODE = """
import warnings
warnings.simplefilter("error")
import torch
import scoreflow as sf
path = sf.AffinePath(lambda t: torch.cos(t * torch.pi / 2), lambda t: torch.sin(t * torch.pi / 2))  # derivatives by jvp
t = torch.tensor([0.25, 0.5], dtype=torch.float64)
alpha_dot, sigma_dot = path.marginal_derivatives(t)
assert torch.allclose(alpha_dot, -torch.pi / 2 * torch.sin(t * torch.pi / 2))
assert torch.allclose(sigma_dot, torch.pi / 2 * torch.cos(t * torch.pi / 2))
print("ok")
"""


def test_flow_path_derivatives_print_no_jit_script_warning():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
