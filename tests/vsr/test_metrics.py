import math

import pytest
import torch

from lsgq_compiler.vsr.metrics import psnr, sqnr


def test_sqnr_known_value():
    x = torch.ones(100)
    assert sqnr(x.double(), x.double() * 1.1) == pytest.approx(20.0, abs=1e-9)  # noise = 0.1 * signal -> 20 dB
    assert sqnr(x, x) == math.inf


def test_psnr_known_value():
    x = torch.zeros(10, 10, dtype=torch.float64)
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-9)
    assert psnr(x * 255, x * 255 + 1, data_range=255) == pytest.approx(48.1308, abs=1e-3)


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr(torch.zeros(3), torch.zeros(4))
