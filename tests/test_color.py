"""The colour distortion (bnrepro/data/transforms.py) against TensorFlow's definitions, computed
here independently: per pixel, with Python's colorsys (the hexcone HSV model that
tf.image.adjust_hue/adjust_saturation use) plus TF's own rules (S = 0 where V <= 0; S clipped to
[0, 1] after scaling; the hue turned by delta modulo 1), per-channel means for contrast, and
TF-slim's inception_preprocessing.distort_color for the orderings and ranges. The batched path
the training process runs on its device (transforms.distort_color_batch inside
engine.Runtime.inputs) is held to the same references, and to the per-image path."""

import colorsys

import numpy as np
import pytest
import torch
from conftest import cpu_runtime

from bnrepro.config import compose
from bnrepro.data import transforms as T

TF_SLIM_ORDERINGS = [  # distort_color(fast_mode=False), color_ordering 0-3
    ["brightness", "saturation", "hue", "contrast"],
    ["saturation", "brightness", "contrast", "hue"],
    ["contrast", "hue", "brightness", "saturation"],
    ["hue", "saturation", "contrast", "brightness"],
]


def ref_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    out = np.empty_like(img)
    for i, j in np.ndindex(img.shape[1:]):
        r, g, b = img[:, i, j]
        if max(r, g, b) <= 0:  # TF's rgb_to_hsv: S = 0 where V <= 0, so every channel is V
            out[:, i, j] = max(r, g, b)
            continue
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        out[:, i, j] = colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * factor)), v)
    return out


def ref_hue(img: np.ndarray, delta: float) -> np.ndarray:
    out = np.empty_like(img)
    for i, j in np.ndindex(img.shape[1:]):
        h, s, v = colorsys.rgb_to_hsv(*img[:, i, j])
        out[:, i, j] = colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)
    return out


def ref_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = img.mean(axis=(1, 2), keepdims=True)  # each channel's own mean
    return (img - mean) * factor + mean


REFERENCE = {
    "brightness": lambda img, d: img + d,
    "saturation": ref_saturation,
    "hue": ref_hue,
    "contrast": ref_contrast,
}


def image(seed: int, low: float = 0.0, high: float = 255.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(low, high, (3, 12, 12))
    img[:, 0, :3] = 90.0  # grey pixels
    img[1, 1, :3] = img[0, 1, :3]  # ties between the largest channels
    img[2, 2, :3] = img[1, 2, :3]  # ... and between the smallest
    return img


@pytest.mark.parametrize("name, values", [
    ("brightness", [-32.0, 7.5, 32.0]),
    ("saturation", [0.0, 0.5, 1.0, 1.37, 3.0]),
    ("hue", [-0.2, -0.05, 0.0, 0.13, 0.5, 0.9]),
    ("contrast", [0.5, 1.0, 1.5]),
])  # fmt: skip
def test_each_operation_is_tensorflows(name, values):
    # the range covers values below 0 and above 255: TF-slim clips only after all four
    img = image(0, low=-40.0, high=295.0)
    img[:, 3, :2] = [[-30.0, -5.0], [-10.0, -20.0], [-20.0, -1.0]]  # V <= 0 (TF: S = 0)
    for v in values:
        ours = T.COLOR_OPS[name](torch.from_numpy(img).float(), v).double().numpy()
        np.testing.assert_allclose(ours, REFERENCE[name](img, v), atol=2e-3, err_msg=f"{name} {v}")


def test_contrast_keeps_each_channels_own_mean_and_saturation_scales_hsv():
    # the two departures of the earlier colour matrix: contrast blended towards the grey mean,
    # saturation was a blend with the luma grey (200, 100, 50 -> 162, 112, 87 at 0.5)
    img = torch.tensor([[200, 100], [100, 60], [50, 22]], dtype=torch.uint8).view(3, 1, 2)
    low = T.apply_color(img, (("contrast", 0.5),))
    assert low.float().mean(dim=(1, 2)).tolist() == img.float().mean(dim=(1, 2)).tolist()
    pixel = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1)
    assert T.apply_color(pixel, (("saturation", 0.5),)).flatten().tolist() == [200, 150, 125]


@pytest.mark.parametrize("ordering", range(4))
def test_a_whole_distortion_is_the_four_operations_in_order_clipped_once(ordering):
    img = image(1).round()
    names = TF_SLIM_ORDERINGS[ordering]
    values = {"brightness": 25.0, "saturation": 1.4, "hue": -0.17, "contrast": 0.6}
    ops = tuple((n, values[n]) for n in names)
    expected = img.copy()
    for n in names:
        expected = REFERENCE[n](expected, values[n])
    expected = np.clip(expected, 0, 255)
    ours = T.apply_color(torch.from_numpy(img).to(torch.uint8), ops)
    assert ours.dtype == torch.uint8
    assert np.abs(ours.numpy() - expected).max() <= 0.5 + 1e-3  # rounded to the nearest level
    # The batched path, as the training process runs it: the same ops, unrounded.
    batch = torch.from_numpy(img).float()[None].repeat(3, 1, 1, 1)
    color = torch.tensor([T.color_params(ops), T.NO_COLOR, T.color_params(ops)])
    batched = T.distort_color_batch(batch, color).clamp_(0, 255).double().numpy()
    np.testing.assert_allclose(batched[0], expected, atol=2e-3)
    np.testing.assert_allclose(batched[2], expected, atol=2e-3)
    np.testing.assert_array_equal(batched[1], img)  # no colour: untouched


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_sampling_follows_distort_color_orderings_and_ranges(strength):
    rng = np.random.default_rng(0)
    draws = [T.sample_color(T.Augment(color_strength=strength), rng) for _ in range(400)]
    orders = {tuple(n for n, _ in ops) for ops in draws}
    assert orders == {tuple(o) for o in TF_SLIM_ORDERINGS}
    ranges = {"brightness": (-32, 32), "saturation": (0.5, 1.5), "hue": (-0.2, 0.2),
              "contrast": (0.5, 1.5)}  # fmt: skip
    for name, (lo, hi) in ranges.items():
        vs = np.array([v for ops in draws for n, v in ops if n == name])
        centre, half = (lo + hi) / 2, (hi - lo) / 2 * strength
        assert vs.min() >= centre - half and vs.max() <= centre + half
        assert vs.min() < centre - 0.9 * half and vs.max() > centre + 0.9 * half
    assert T.sample_color(T.Augment(color_strength=0), rng) == ()


def test_color_params_are_the_ops_as_a_row():
    rng = np.random.default_rng(5)
    for strength in (0.0, 0.5, 1.0, 2.0):
        for _ in range(20):
            ops = T.sample_color(T.Augment(color_strength=strength), rng)
            row = T.color_params(ops)
            assert len(row) == len(T.COLOR_COLUMNS)
            back = T.color_ops(row)
            assert [n for n, _ in back] == [n for n, _ in ops]
            assert [v for _, v in back] == pytest.approx([v for _, v in ops])
    assert T.color_params(()) == T.NO_COLOR and T.color_ops(T.NO_COLOR) == ()
    with pytest.raises(ValueError):  # an order that is none of distort_color's four
        T.color_params((("hue", 0.1), ("brightness", 3.0), ("contrast", 1.1), ("saturation", 1.0)))


@pytest.mark.parametrize("channels_last, chunk", [(False, None), (True, None), (False, 5)])
def test_the_device_colour_of_a_batch_is_the_per_image_colour(channels_last, chunk, monkeypatch):
    """engine.Runtime.inputs on a batch of every ordering and strengths 0-2 (TF-slim's range x2,
    colour-less rows among them) gives, image by image, the per-image reference's colour
    (transforms.apply_color on the same parameters), normalised: within the reference's rounding
    to uint8 levels (half a level). Whole (a GPU's way) or in chunks of 5 images (the CPU's)."""
    if chunk:
        monkeypatch.setattr(T, "CPU_COLOR_CHUNK_BYTES", chunk * 3 * 10 * 10 * 4)
    rng = np.random.default_rng(3)
    strengths = [0.0, 0.5, 1.0, 2.0]
    ops = [T.sample_color(T.Augment(color_strength=strengths[k % 4]), rng) for k in range(24)]
    assert {tuple(n for n, _ in o) for o in ops} == {*T.COLOR_ORDERINGS, ()}
    images = torch.from_numpy(rng.integers(0, 256, (24, 3, 10, 10), dtype=np.uint8))
    images[:, :, :2] = images[:, :1, :2]  # grey pixels
    color = torch.tensor([T.color_params(o) for o in ops])
    data_cfg = compose("train", ["data=imagenet"]).data
    runtime = cpu_runtime(data_cfg, channels_last=channels_last)
    inputs = runtime.inputs(images, color)
    assert inputs.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    pixels = inputs * runtime.std + runtime.mean  # back to 0-255
    expected = torch.stack([T.apply_color(im, o) for im, o in zip(images, ops, strict=True)])
    assert (pixels - expected.float()).abs().max() <= 0.5 + 1e-3
    plain = [k for k, o in enumerate(ops) if not o]
    assert torch.allclose(pixels[plain], images[plain].float(), atol=1e-3)
    # The same images without colour: the plain normalisation.
    assert torch.equal(runtime.inputs(images, torch.tensor([T.NO_COLOR] * 24)),
                       runtime.inputs(images))  # fmt: skip
