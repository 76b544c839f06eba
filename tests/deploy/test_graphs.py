"""``cuda_graphs``: replay at fixed shapes equals the eager call; off CUDA it is the model itself."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lsgq_compiler.deploy import cuda_graphs
from lsgq_compiler.deploy.graphs import GraphedModel


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(32, 16)
        self.config = {"name": "toy"}

    def forward(self, x: torch.Tensor, scale: float = 1.0, return_dict: bool = True):
        y = torch.nn.functional.gelu(self.lin(x)) * scale
        return {"sample": y} if return_dict else (y,)


def test_cpu_calls_the_model_and_forwards_attributes() -> None:
    torch.manual_seed(0)
    m = Toy()
    g = cuda_graphs(m)
    assert isinstance(g, GraphedModel) and cuda_graphs(g) is g
    x = torch.randn(3, 5, 32)
    assert torch.equal(g(x, scale=2.0)["sample"], m(x, scale=2.0)["sample"].detach())
    assert g.config == {"name": "toy"} and g.lin is m.lin  # the pipeline reads the model's attributes
    assert g.graphs == 0  # nothing captured off CUDA
    with pytest.raises(ValueError, match="max_graphs"):
        cuda_graphs(m, max_graphs=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_replay_is_exact_and_recaptures_per_shape() -> None:
    torch.manual_seed(0)
    m = Toy().cuda().to(torch.bfloat16)
    g = cuda_graphs(m, max_graphs=2)
    for shape in ((4, 64, 32), (4, 64, 32), (2, 48, 32), (1, 8, 32), (4, 64, 32)):
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        out = g(x, scale=0.5, return_dict=False)[0]
        with torch.no_grad():
            ref = m(x, scale=0.5, return_dict=False)[0]
        assert torch.equal(out, ref), shape  # same kernels on the same inputs: bit for bit
        out2 = g(x, scale=0.5, return_dict=False)[0]
        assert torch.equal(out2, out) and out2.data_ptr() != out.data_ptr()  # a copy, not the graph's buffer
    assert g.graphs == 2  # three signatures seen, the least recently used dropped
