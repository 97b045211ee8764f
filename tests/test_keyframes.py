"""Keyframed style weights."""
import json

import numpy as np
import pytest

from engine_server.errors import InputError
from engine_server.style.keyframes import interpolate, load_style_weights


def test_linear_between_keys_and_held_outside():
    w = interpolate({3: 0.0, 7: 1.0}, 9)
    assert np.allclose(w, [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1])


def test_file_by_name_stem_or_path(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"a": {"1": 1, "5": 0}, "b.png": {"1": 0, "5": 1}}))
    w = load_style_weights(path, ["dir/a.jpg", "other/b.png", "c.jpg"], 5)
    assert np.allclose(w[:, 0], [1, 0.75, 0.5, 0.25, 0])
    assert np.allclose(w[:, 1], [0, 0.25, 0.5, 0.75, 1])
    assert np.allclose(w[:, 2], 1.0)  # not mentioned: weight 1


def test_no_file_means_weight_one():
    assert np.array_equal(load_style_weights(None, ["x.jpg"], 3), np.ones((3, 1)))


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"ghost": {"1": 1}}', "'ghost' was not given"),
    ('{"a": {"x": 1}}', "is not frame: weight"),
    ('{"a": {"0": 1}}', "frame >= 1"),
    ('{"a": {"1": -2}}', "weight >= 0"),
    ('["a"]', "expected an object"),
])
def test_bad_files_name_the_problem(tmp_path, content, fragment):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(InputError, match=fragment) as info:
        load_style_weights(path, ["a.jpg"], 4)
    assert str(path) in str(info.value)
