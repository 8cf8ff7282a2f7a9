"""pdcore.fastjson: the encoders built once write exactly what json.JSONEncoder writes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdcore.fastjson import encoder

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
OPTIONS = [
    {"default": str, "separators": (",", ":")},
    {"ensure_ascii": False},
    {},
]


@settings(max_examples=200, deadline=None)
@given(values, st.sampled_from(OPTIONS))
def test_output_equals_json_encoder(value, options):
    assert encoder(**options)(value) == json.JSONEncoder(**options).encode(value)


def test_default_is_used_and_its_absence_refused():
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert encoder(default=str, separators=(",", ":"))({"x": Odd()}) == '{"x":"odd"}'
    with pytest.raises(TypeError, match="not JSON serializable"):
        encoder()({"x": Odd()})
