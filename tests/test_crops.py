"""The crop geometry (GoogLeNet section 7, docs/paper.md section 5) and the cutting on tensors."""

from __future__ import annotations

import pytest
import torch

from bnrepro.evaluation.crops import Crop, crop_boxes, cut_crops, resized_size, scaled


def _expected_144(height: int, width: int) -> set[Crop]:
    """The 144 crops written out from the paper's words, for a 224 base."""
    out = set()
    for s in (256, 288, 320, 352):
        h, w = resized_size(height, width, s)
        extra = max(h, w) - s
        for off in (0, extra // 2, extra):  # left/centre/right (top/centre/bottom if portrait)
            top, left = (0, off) if w > h else (off, 0)
            d = s - 224
            for dy, dx in ((0, 0), (0, d), (d, 0), (d, d), (d // 2, d // 2)):
                out |= {Crop(s, top + dy, left + dx, 224, f) for f in (False, True)}
            out |= {Crop(s, top, left, s, f) for f in (False, True)}  # the whole square
    return out


@pytest.mark.parametrize("height, width", [(480, 640), (640, 480), (300, 1000)])
def test_144_crops_are_googlenets(height: int, width: int) -> None:
    boxes = crop_boxes(height, width, 144)
    assert len(boxes) == 144 and len(set(boxes)) == 144
    assert set(boxes) == _expected_144(height, width)
    assert [b.scale for b in boxes].count(256) == 36  # 3 squares x 6 views x 2 mirrors
    assert boxes[72:] == [b._replace(flip=True) for b in boxes[:72]]  # mirrors last, same order
    for b in boxes:  # inside the resized image
        h, w = resized_size(height, width, b.scale)
        assert 0 <= b.top and b.top + b.size <= h and 0 <= b.left and b.left + b.size <= w


def test_144_landscape_positions_written_out() -> None:
    # 480x640 at shorter side 256 is 256x341: squares at x = 0, 42, 85.
    assert resized_size(480, 640, 256) == (256, 341)
    boxes = crop_boxes(480, 640, 144)
    assert boxes[:6] == [
        Crop(256, 0, 0, 224, False),
        Crop(256, 0, 32, 224, False),
        Crop(256, 32, 0, 224, False),
        Crop(256, 32, 32, 224, False),
        Crop(256, 16, 16, 224, False),
        Crop(256, 0, 0, 256, False),
    ]
    assert {b.left for b in boxes[:18] if b.size == 256} == {0, 42, 85}
    assert {b.top for b in boxes if b.size != 224} == {0}  # landscape squares span the height


def test_144_portrait_squares_are_top_centre_bottom() -> None:
    squares = [b for b in crop_boxes(640, 480, 144) if b.size != 224 and not b.flip]
    assert [(b.scale, b.top, b.left) for b in squares[:3]] == [
        (256, 0, 0),
        (256, 42, 0),
        (256, 85, 0),
    ]
    assert [b.scale for b in squares] == [256] * 3 + [288] * 3 + [320] * 3 + [352] * 3


def test_10_and_1_crops() -> None:
    ten = crop_boxes(480, 640, 10)  # resized 256x341
    assert len(set(ten)) == 10
    assert ten[:5] == [
        Crop(256, 0, 0, 224, False),
        Crop(256, 0, 117, 224, False),
        Crop(256, 32, 0, 224, False),
        Crop(256, 32, 117, 224, False),
        Crop(256, 16, 58, 224, False),
    ]
    assert ten[5:] == [b._replace(flip=True) for b in ten[:5]]
    assert crop_boxes(480, 640, 1) == [Crop(256, 16, 58, 224, False)]
    assert crop_boxes(640, 480, 1) == [Crop(256, 58, 16, 224, False)]


def test_sizes_follow_the_base_resolution() -> None:
    assert [scaled(s, 64) for s in (256, 288, 320, 352)] == [73, 82, 91, 101]
    boxes = crop_boxes(100, 150, 144, base=64)
    assert len(set(boxes)) == 144
    assert {b.scale for b in boxes} == {73, 82, 91, 101}
    assert {b.size for b in boxes} == {64, 73, 82, 91, 101}
    assert crop_boxes(100, 150, 1, base=64) == [Crop(73, 4, 23, 64, False)]  # 73x110, centre 64


def test_bad_crop_count_is_refused() -> None:
    with pytest.raises(ValueError, match="crops must be one of"):
        crop_boxes(100, 100, 5)


def test_cut_crops_are_the_boxes_pixels() -> None:
    # Shorter side 256 at base 224: the first scale needs no resize, so its 224-px crops are
    # exact slices of the image; the mirrors are the flipped views.
    image = torch.randint(0, 256, (3, 256, 400), dtype=torch.uint8)
    crops = cut_crops(image, 144)
    boxes = crop_boxes(256, 400, 144)
    assert crops.shape == (144, 3, 224, 224) and crops.dtype == torch.uint8
    for i, b in enumerate(boxes[:18]):
        if b.size == 224:
            assert torch.equal(crops[i], image[:, b.top : b.top + 224, b.left : b.left + 224])
    assert torch.equal(crops[72:], crops[:72].flip(-1))
    ten = cut_crops(image, 10)
    assert torch.equal(ten[1], image[:, :224, 400 - 224 :])
    assert torch.equal(cut_crops(image, 1)[0], image[:, 16:240, 88:312])


def test_cut_crops_keep_a_flat_colour_at_every_scale() -> None:
    image = torch.empty(3, 90, 130, dtype=torch.uint8)
    image[0], image[1], image[2] = 10, 128, 250
    crops = cut_crops(image, 144, base=64)
    assert crops.shape == (144, 3, 64, 64)
    assert torch.equal(crops, image[:, :64, :64].expand(144, 3, 64, 64))


def test_cut_crops_refuses_an_undecoded_or_float_image() -> None:
    with pytest.raises(ValueError, match="decoded uint8 image"):
        cut_crops(torch.zeros(3, 100, 100), 10)
