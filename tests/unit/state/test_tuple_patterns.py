"""The tuple pattern grammar of SPEC.md §8, one row per form."""

import pytest

from pdcore.errors import OpError
from pdcore.state.tuplepattern import ANY, canon, check_fields, compile_pattern

MATCHES = [
    # (pattern, tuple, matches?)
    # exact values, deep equality
    (["task"], ["task"], True),
    (["task"], ["tasks"], False),
    (["task", "build", 1], ["task", "build", 1], True),
    (["n", 1], ["n", 1.0], True),
    (["n", 1], ["n", True], False),
    (["n", True], ["n", 1], False),
    (["n", True], ["n", True], True),
    (["n", False], ["n", 0], False),
    (["n", "1"], ["n", 1], False),
    (["o", {"a": [1, {"b": 2}]}], ["o", {"a": [1, {"b": 2}]}], True),
    (["o", {"a": [1, {"b": 2}]}], ["o", {"a": [1, {"b": 3}]}], False),
    (["o", {"a": 1}], ["o", {"a": 1, "b": 2}], False),
    (["o", [1, 2]], ["o", [2, 1]], False),
    (["o", [1, True]], ["o", [1, 1]], False),
    (["o", [None]], ["o", [None]], True),
    # "*" and null match anything
    (["*"], ["task"], True),
    (["*"], [42], True),
    ([None], [{"x": 1}], True),
    (["task", "*", None], ["task", 1, None], True),
    # numeric comparisons
    (["s", ">0.7"], ["s", 0.9], True),
    (["s", ">0.7"], ["s", 0.7], False),
    (["s", ">=0.7"], ["s", 0.7], True),
    (["s", "<10"], ["s", 9], True),
    (["s", "<10"], ["s", 10], False),
    (["s", "<=10"], ["s", 10], True),
    (["s", ">-1"], ["s", 0], True),
    (["s", ">1e2"], ["s", 101], True),
    (["s", "> 5"], ["s", 6], True),
    # a non-number never matches a comparison (no error)
    (["s", ">0.7"], ["s", "0.9"], False),
    (["s", ">0"], ["s", True], False),
    (["s", "<1"], ["s", None], False),
    (["s", ">=0"], ["s", [1]], False),
    (["s", "<=5"], ["s", {"v": 1}], False),
    # prefix:*
    (["myapp:*"], ["myapp:api"], True),
    (["myapp:*"], ["myapp:api:main"], True),
    (["myapp:*"], ["myapp"], False),
    (["myapp:*"], ["other:api"], False),
    (["myapp:*"], [7], False),
    (["my*"], ["myapp:api"], True),
    (["myapp:ap*"], ["myapp:api:main"], True),
    # segment patterns: same segment count, * segments match anything
    (["myapp:*:main"], ["myapp:api:main"], True),
    (["myapp:*:main"], ["myapp:web:main"], True),
    (["myapp:*:main"], ["myapp:api:dev"], False),
    (["myapp:*:main"], ["myapp:api:main:x"], False),
    (["myapp:*:main"], ["myapp:main"], False),
    (["*:api"], ["other:api"], True),
    (["*:api"], ["a:b:api"], False),
    (["my*:*:ma*"], ["myapp:x:main"], True),
    # a shorter pattern matches the leading fields; a longer one never matches
    (["task"], ["task", "build", 0.9], True),
    (["task", "build"], ["task"], False),
    ([], ["anything", 1], True),
]


@pytest.mark.parametrize(("pattern", "fields", "expected"), MATCHES, ids=[repr(m[:2]) for m in MATCHES])
def test_pattern_grammar(pattern, fields, expected):
    assert compile_pattern(pattern).match(fields) is expected


@pytest.mark.parametrize(("pattern", "fields", "expected"), MATCHES[:12])
def test_pattern_as_json_text_is_the_same(pattern, fields, expected):
    import json

    assert compile_pattern(json.dumps(pattern)).match(fields) is expected


MALFORMED = [
    # (pattern, position named)
    ('["task", ', 9),
    ("task", 0),
    ('{"a": 1}', 0),
    ('"task"', 0),
    ('["s", ">abc"]', 1),
    ('["s", "x", "<"]', 2),
    ('[">=1.2.3"]', 0),
    ('["s", "<=nan"]', 1),
    ('["a*b"]', 0),
    ('["x", "**"]', 1),
    ('["my*app:*"]', 0),
    (str(list(range(17))), 16),
]


@pytest.mark.parametrize(("text", "position"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_pattern_is_refused_with_its_position(text, position):
    with pytest.raises(OpError) as info:
        compile_pattern(text)
    err = info.value
    assert (err.code, err.field, err.status) == ("invalid_pattern", "pattern", 400)
    assert f"at position {position}" in err.message
    assert err.extra["position"] == position


def test_index_head_is_concrete_first_element_only():
    assert compile_pattern(["task", "*"]).head == "task"
    assert compile_pattern([1]).head == canon(1.0)
    assert compile_pattern([True]).head != canon(1)
    for pattern in (["*"], [None], [">1"], ["app:*"], []):
        assert compile_pattern(pattern).head is ANY


@pytest.mark.parametrize(("fields", "code"), [
    ([], "invalid_argument"),
    ("task", "invalid_argument"),
    (list(range(17)), "invalid_argument"),
    (["x", float("nan")], "invalid_argument"),
    (["x", b"bytes"], "invalid_argument"),
    (["x", {1: 2}], "invalid_argument"),
    (["x" * 5000], "too_large"),
])
def test_bad_tuples_are_refused(fields, code):
    with pytest.raises(OpError) as info:
        check_fields(fields, 4096)
    assert info.value.code == code


def test_sixteen_fields_within_4k_are_fine():
    assert check_fields(list(range(16)), 4096) == list(range(16))
