"""Colour preservation keeps the content's chrominance."""
import numpy as np

from engine_server.style import color


def test_recombine_keeps_content_colour_and_result_luminance():
    rng = np.random.default_rng(1)
    content = rng.integers(40, 200, (8, 8, 3)).astype(np.uint8)
    result = color.grey_rgb(np.full((8, 8), 120.0))
    out = color.recombine(result, content)
    assert np.allclose(color.luminance(out), 120, atol=1.5)
    yiq = lambda img: np.asarray(img, np.float64) @ color._RGB_TO_YIQ.T
    assert np.allclose(yiq(out)[..., 1:], yiq(content)[..., 1:], atol=1.5)


def test_style_luminance_matched_to_content_statistics():
    rng = np.random.default_rng(2)
    style = rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)
    content = np.clip(rng.normal(100, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
    grey = color.style_as_grey(style, content)
    assert np.allclose(grey[..., 0], grey[..., 2])  # grey
    assert abs(grey[..., 0].mean() - color.luminance(content).mean()) < 1.0
    assert abs(grey[..., 0].std() - color.luminance(content).std()) < 1.0
