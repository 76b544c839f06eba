import pytest
import torch
from torch import nn

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import CaptureError, capture


def test_capture_tags_linears_with_module_paths(model_and_inputs):
    name, model, inputs = model_and_inputs
    cap = capture(model, inputs)
    paths = [n.meta["lsgq_path"] for n in cap.linear_nodes()]
    linears = {k for k, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert paths and set(paths) <= linears
    assert len(set(paths)) >= 0.8 * len(linears)
    out = cap.gm(**inputs)
    torch.testing.assert_close(out, cap.reference_output)
    assert any(n.target == torch.ops.aten.scaled_dot_product_attention.default for n in cap.gm.graph.nodes)


def test_capture_does_not_touch_model():
    m = tiny_wan()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    capture(m, wan_inputs())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # branch on a tensor value
            return self.lin(x)
        return -self.lin(x)


def test_data_dependent_branch_specialised_and_guarded():
    cap = capture(DataDependent(), (torch.ones(2, 4),))
    assert any("x.sum() > 0" in r for r in cap.rewrites)
    with pytest.raises(RuntimeError, match="capture guard"):
        cap.gm(-torch.ones(2, 4))  # the other branch


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * float(x.sum().numpy())  # leaves torch: nothing to trace


def test_capture_failure_names_model_and_construct():
    with pytest.raises(CaptureError) as e:
        capture(Untraceable(), (torch.ones(2, 4),))
    msg = str(e.value)
    assert "Untraceable" in msg and "data-dependent" in msg and "->" in msg


def test_inputs_that_do_not_match():
    with pytest.raises(ValueError, match="do not match WanTransformer3DModel"):
        capture(tiny_wan(), dict(hidden_states=torch.randn(1, 3, 2, 8, 8), timestep=torch.tensor([1]),
                                 encoder_hidden_states=torch.randn(1, 5, 32)))
    with pytest.raises(TypeError, match="tuple of positional inputs"):
        capture(tiny_wan(), "not inputs")
    with pytest.raises(TypeError, match="nn.Module"):
        capture(lambda x: x, (torch.ones(1),))
