"""Pictures respect the data's range: read the PNGs back."""
import logging

import matplotlib.image
import numpy as np
import pytest

from tfgeom.analyses import plots


def _panel_colours(png):
    """Distinct RGB colours (rounded to 0.05) of a PNG read back, without the alpha channel."""
    img = matplotlib.image.imread(png)[..., :3]
    return {tuple(np.round(px / 0.05).astype(int)) for px in img.reshape(-1, 3)}


def test_rgb_0_255_images_are_drawn_in_colour_not_clipped(tmp_path, caplog):
    """A 0..255 RGB image half dark red (128, 0, 0), half dark blue (0, 0, 64): the PNG holds those shades
    (drawing that clips to [0, 1] would give pure red and pure blue), and matplotlib logs no clipping warning."""
    img = np.zeros((1, 8, 8, 3), np.float32)
    img[0, :, :4, 0] = 128.0
    img[0, :, 4:, 2] = 64.0
    perturbed = np.clip(img + np.random.default_rng(0).normal(0, 5, img.shape), 0, 255).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        path = plots.image_pairs(img, perturbed, ["a"], tmp_path / "rgb.png", bounds=(0.0, 255.0))
    assert "Clipping" not in caplog.text
    colours = _panel_colours(path)
    assert (10, 0, 0) in colours and (0, 0, 5) in colours


def test_grayscale_minus_one_to_one_spans_black_to_white(tmp_path, caplog):
    """A -1..1 grayscale image, left half -1 and right half 1, is drawn black and white (the old [0, 1]
    assumption would draw -1 and 0 alike); the perturbation row uses a diverging map (red and blue)."""
    img = np.full((1, 6, 6, 1), -1.0, np.float32)
    img[0, :, 3:] = 1.0
    perturbed = img.copy()
    perturbed[0, 0, 0] += 0.3
    perturbed[0, 5, 5] -= 0.3
    with caplog.at_level(logging.WARNING):
        path = plots.path_strip(np.concatenate([img, perturbed]), [0, 1], tmp_path / "gray.png", bounds=(-1.0, 1.0))
        pairs = plots.image_pairs(img, perturbed, ["b"], tmp_path / "pairs.png", bounds=(-1.0, 1.0))
    assert "Clipping" not in caplog.text
    colours = _panel_colours(path)
    assert (0, 0, 0) in colours and (20, 20, 20) in colours
    diverging = _panel_colours(pairs)
    reds = [c for c in diverging if c[0] >= 8 and c[2] <= 4]
    blues = [c for c in diverging if c[2] >= 8 and c[0] <= 4]
    assert reds and blues


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.0, 255.0), (-2.5, 3.0)])
def test_picture_scaling_is_affine_in_the_bounds(bounds):
    """The low bound maps to 0, the high one to 1, the midpoint to 0.5."""
    low, high = bounds
    img = np.array([low, (low + high) / 2, high], np.float32).reshape(1, 3, 1)
    np.testing.assert_allclose(plots._as_picture(img, bounds)[0], [0.0, 0.5, 1.0], atol=1e-6)
