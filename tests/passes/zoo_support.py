"""Shared by the recipe-zoo tests: capture each tiny model once per test module."""
import copy

import pytest

from lsgq_compiler import api
from lsgq_compiler.capture import capture


@pytest.fixture(scope="module", autouse=True)
def capture_once():
    """torch.export dominates a tiny compile and is tested elsewhere: each model is captured
    once per module and every compile gets a fresh deep copy of the captured graph."""
    cache = {}

    def cached(model, inputs, copy_model=True, form="graph"):
        if id(model) not in cache:
            cache[id(model)] = (model, capture(model, inputs, copy_model, form=form))
        return copy.deepcopy(cache[id(model)][1])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "capture", cached)
        yield
