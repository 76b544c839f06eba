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
    (dict(options={"lr": object()}), TypeError, "JSON"),
])
def test_validation(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        QuantConfig(**kw)


def test_nan_budget_and_unknown_options_are_errors():
    """Issue 15: time_budget_s=nan and misspelled options were accepted silently."""
    import math

    from lsgq_compiler import QuantConfig

    for bad in (math.nan, -1.0, "60"):
        with pytest.raises(ValueError, match="time_budget_s"):
            QuantConfig(time_budget_s=bad)
    with pytest.raises(ValueError, match="(?s)'lowrank_shar' \\(did you mean 'lowrank_share'\\?\\).*known options"):
        QuantConfig(recipe="lsgquant", options={"lowrank_shar": 0.02})
    assert QuantConfig(recipe="lsgquant", options={"lowrank_share": 0.02}).options == {"lowrank_share": 0.02}


def test_known_options_cover_every_option_the_sources_read():
    import re
    from pathlib import Path

    from lsgq_compiler.config import KNOWN_OPTIONS

    root = Path(__file__).resolve().parents[1]
    pat = re.compile(r'(?:\.option\(|config\.options\.get\(|config\.options\[|\bopt\()\s*["\']([a-z_0-9]+)["\']')
    read = {m.group(1) for d in ("lsgq_compiler", "passes") for p in (root / d).rglob("*.py")
            for m in pat.finditer(p.read_text())}
    assert read and read <= KNOWN_OPTIONS, sorted(read - KNOWN_OPTIONS)
