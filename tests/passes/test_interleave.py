"""InterleaveToStack: diffusers' interleaved RoPE writes become stack + reshape, exactly."""
import torch
from torch import nn

from lsgq_compiler.capture import capture
from lsgq_compiler.passes.interleave import InterleaveToStack


class InterleavedRope(nn.Module):
    """The write pattern of diffusers' ``apply_rotary_emb`` (Wan): ``out[..., 0::2] = ...``."""

    def __init__(self, read_between: bool = False) -> None:
        super().__init__()
        self.read_between = read_between

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        early = out.sum() if self.read_between else 0.0
        out[..., 1::2] = x1 * sin + x2 * cos
        return out * 2.0 + early


class TokenInterleave(nn.Module):
    """Even/odd writes along the token axis, not the last one: not the pattern."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.empty(a.shape[0], 2 * a.shape[1], a.shape[2])
        out = torch.empty_like(out)
        out[:, 0::2] = a
        out[:, 1::2] = b
        return out + 1.0


def _inputs(d: int = 8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 16, 3, d, generator=g), torch.randn(1, 16, 1, d // 2, generator=g),
            torch.randn(1, 16, 1, d // 2, generator=g))


def _ops(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def test_rewrites_interleaved_writes_exactly():
    m, inp = InterleavedRope(), _inputs()
    gm = capture(m, inp).gm
    before = gm(*inp)
    p = InterleaveToStack()
    assert p(gm).modified and p.rewritten == 1
    ops = _ops(gm)
    assert not any("copy_" in o or "empty_like" in o for o in ops) and any("stack" in o for o in ops)
    assert torch.equal(gm(*inp), before) and torch.equal(gm(*inp), m(*inp))  # same elements, same order


def test_leaves_other_patterns_alone():
    inp = _inputs()
    gm = capture(InterleavedRope(read_between=True), inp).gm  # a read sees the half-written tensor
    assert not InterleaveToStack()(gm).modified
    m, ab = TokenInterleave(), (torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    gm = capture(m, ab).gm
    assert not InterleaveToStack()(gm).modified and torch.equal(gm(*ab), m(*ab))
