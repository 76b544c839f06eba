import pytest

from lsgq_compiler import QuantConfig


def test_defaults_and_roundtrip():
    c = QuantConfig()
    assert c.recipe == "minmax" and "proj_out" in c.keep_fp and c.tag == "minmax-w8a8"
    assert QuantConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(recipe="nope"), ValueError, "unknown recipe"),
    (dict(weight_bits=9), ValueError, "outside the supported range"),
    (dict(act_bits=1), ValueError, "outside the supported range"),
    (dict(weight_bits=4.0), TypeError, "must be an int"),
    (dict(keep_fp="proj_out"), TypeError, "sequence"),
    (dict(allowed_bits=(4, 12)), ValueError, "allowed_bits"),
    (dict(options={"x": object()}), TypeError, "JSON"),
])
def test_validation(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        QuantConfig(**kw)
