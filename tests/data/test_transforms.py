import numpy as np
import pytest
import torch
from PIL import Image

from fpn.config import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from fpn.data.transforms import (
    GraphInputTransform,
    batch_images,
    flip_resize,
    hflip_boxes,
    is_normalized,
    normalize,
    pick_scales,
    prepare,
    read_image,
    resize_factor,
    resize_image,
    resized_size,
    target_size,
    transform_image,
    unnormalize,
)
from fpn.errors import UserError


def test_resize_factor_shorter_side_and_max_size():
    assert resize_factor(375, 500, 600, 1000) == 1.6  # VOC: 500x375 -> 800x600
    assert resized_size(375, 500, 1.6) == (600, 800)
    assert resize_factor(500, 333, 600, 1000) == 600 / 333  # portrait: the shorter side is the width
    assert resized_size(500, 333, 600 / 333) == (901, 600)
    assert resize_factor(100, 1000, 600, 1000) == 1.0  # 6x would make the long side 6000 > 1000
    assert resize_factor(200, 500, 600, 1000) == 2.0  # long side exactly max_size: allowed
    assert resized_size(200, 500, 2.0) == (400, 1000)


def test_hflip_boxes_continuous():
    boxes = torch.tensor([[0.0, 1.0, 10.0, 5.0], [90.5, 0.0, 100.0, 8.0]])
    out = hflip_boxes(boxes, 100)
    torch.testing.assert_close(out, torch.tensor([[90.0, 1.0, 100.0, 5.0], [0.0, 0.0, 9.5, 8.0]]), rtol=0, atol=0)
    torch.testing.assert_close(hflip_boxes(out, 100), boxes, rtol=0, atol=0)  # an involution
    assert hflip_boxes(torch.zeros(0, 4), 100).shape == (0, 4)


def _block_image(h, w, box):
    """uint8 (3, h, w), zero except 255 inside the continuous integer box."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 255
    return img


def test_flip_resize_boxes_exact_and_follow_the_pixels():
    img = _block_image(375, 500, (0, 0, 100, 50))
    boxes = torch.tensor([[0.0, 0.0, 100.0, 50.0], [400.0, 300.0, 500.0, 375.0]])
    out, b, f = flip_resize(img, boxes, 600, 1000, flip=True)
    assert f == 1.6 and out.shape == (3, 600, 800) and out.dtype == torch.uint8
    torch.testing.assert_close(b, torch.tensor([[640.0, 0.0, 800.0, 80.0], [0.0, 480.0, 160.0, 600.0]]), rtol=0, atol=0)
    # the white block moved where the first box says (bilinear edges aside)
    assert (out[:, 1:79, 641:800] == 255).all()
    assert (out[:, :, :639] == 0).all() and (out[:, 81:, :] == 0).all()
    # without flip: same factor, boxes only scaled
    out, b, _ = flip_resize(img, boxes, 600, 1000, flip=False)
    torch.testing.assert_close(b, boxes * 1.6, rtol=0, atol=0)
    assert (out[:, 1:79, 0:159] == 255).all() and (out[:, :, 161:] == 0).all()


def test_flip_resize_same_factor_both_axes_with_max_size():
    img = torch.zeros(3, 100, 1000, dtype=torch.uint8)
    out, b, f = flip_resize(img, torch.tensor([[10.0, 20.0, 30.0, 40.0]]), 600, 500)
    assert f == 0.5 and out.shape == (3, 50, 500)
    torch.testing.assert_close(b, torch.tensor([[5.0, 10.0, 15.0, 20.0]]), rtol=0, atol=0)


def test_normalize_imagenet_exact():
    img = torch.tensor([[[255, 0]], [[0, 255]], [[128, 10]]], dtype=torch.uint8)  # (3, 1, 2)
    out = normalize(img, "imagenet")
    mean, std = np.array(IMAGENET_MEAN_RGB)[:, None, None], np.array(IMAGENET_STD_RGB)[:, None, None]
    expected = (img.numpy() / 255.0 - mean) / std
    assert out.dtype == torch.float32 and out.shape == (3, 1, 2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)


def test_normalize_caffe_is_bgr_0_255_minus_mean():
    img = torch.tensor([[[200]], [[100]], [[50]]], dtype=torch.uint8)  # R, G, B
    out = normalize(img, "caffe")
    b, g, r = CAFFE_MEAN_BGR
    np.testing.assert_allclose(out.flatten().numpy(), [50 - b, 100 - g, 200 - r], rtol=0, atol=1e-4)


def test_normalize_into_a_view_and_unnormalize():
    img = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    for mode in ("imagenet", "caffe"):
        buf = torch.full((3, 8, 8), -1.0)
        normalize(img, mode, out=buf[:, :5, :7])
        torch.testing.assert_close(buf[:, :5, :7], normalize(img, mode))
        assert (buf[:, 5:, :] == -1).all()  # nothing outside the view touched
        assert torch.equal(unnormalize(normalize(img, mode), mode), img)
    with pytest.raises(UserError, match="data.normalization: unknown 'bgr'"):
        normalize(img, "bgr")


def test_prepare_composes_flip_resize_and_normalize():
    img = _block_image(30, 40, (0, 0, 10, 30))
    out, b, f = prepare(img, torch.tensor([[0.0, 0.0, 10.0, 30.0]]), 60, 1000, "imagenet", flip=True)
    ref, _, _ = flip_resize(img, None, 60, 1000, flip=True)
    assert f == 2.0 and out.shape == (3, 60, 80)
    torch.testing.assert_close(out, normalize(ref, "imagenet"))
    torch.testing.assert_close(b, torch.tensor([[60.0, 0.0, 80.0, 60.0]]), rtol=0, atol=0)


def test_pick_scales_deterministic():
    a = pick_scales((480, 576, 688), 50, np.random.default_rng([0, 1]))
    assert a == pick_scales((480, 576, 688), 50, np.random.default_rng([0, 1]))
    assert set(a) == {480, 576, 688}
    assert pick_scales((600,), 3, np.random.default_rng(0)) == [600, 600, 600]


# --- decoding ------------------------------------------------------------------------------------------------


def test_read_image_jpeg_gray_and_png_named_jpg(tmp_path):
    Image.new("RGB", (7, 5), (255, 0, 0)).save(tmp_path / "a.jpg", quality=100)
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (3, 5, 7) and img.dtype == torch.uint8
    assert abs(int(img[0, 2, 3]) - 255) <= 2 and int(img[1, 2, 3]) <= 2
    Image.new("L", (4, 3), 77).save(tmp_path / "g.jpg")
    assert read_image(tmp_path / "g.jpg").shape == (3, 3, 4)
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "p.jpg", format="PNG")
    assert read_image(tmp_path / "p.jpg")[:, 0, 0].tolist() == [1, 2, 3]


def test_read_image_errors_are_one_line_naming_the_file(tmp_path):
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {"trunc.jpg": "truncated", "text.jpg": "not an image file", "empty.jpg": "empty", "gone.jpg": "not found"}
    for name, words in cases.items():
        with pytest.raises(UserError) as e:
            read_image(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: ") and words in msg and "\n" not in msg, msg


@pytest.mark.parametrize("size", [(375, 500), (500, 333), (100, 1000), (480, 640)])
def test_torchvision_resize_equals_its_detection_transform(size):
    """resize="torchvision": normalised, then a float resize to floor(h * s) (375 x 500 -> 800 x 1066, as
    interpolate's recompute_scale_factor computes it), boxes scaled per axis: GeneralizedRCNNTransform exactly."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[10.0, 20.0, 90.0, 70.0], [0.0, 0.0, float(size[1]), float(size[0])]])
    reference = GeneralizedRCNNTransform(800, 1333, list(IMAGENET_MEAN_RGB), list(IMAGENET_STD_RGB))
    (images, targets) = reference([img.float() / 255], [{"boxes": boxes}])
    h, w = images.image_sizes[0]
    out, b, factor = prepare(img, boxes, 800, 1333, "imagenet", resize="torchvision")
    assert out.shape[-2:] == (h, w) and torch.equal(out, images.tensors[0, :, :h, :w])
    assert torch.equal(b, targets[0]["boxes"])
    assert factor == min(800 / min(size), 1333 / max(size))
    fast, _, _ = prepare(img, boxes, 800, 1333, "imagenet")  # the default path: uint8 resize, rounded sizes
    assert fast.shape[-2:] == resized_size(*size, resize_factor(*size, 800, 1333))
    if size == (375, 500):  # VOC's size: 1066.7 px wide
        assert (h, w) == (800, 1066) and fast.shape[-2:] == (800, 1067)


def test_transform_image_keeps_uint8_fast_and_unknown_resize():
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    out, _, _ = transform_image(img, None, 60, 1000, "imagenet")
    assert out.dtype == torch.uint8 and out.shape == (3, 60, 80)
    out, _, _ = transform_image(img, None, 60, 1000, "caffe", resize="torchvision")
    assert out.dtype == torch.float32 and is_normalized("torchvision") and not is_normalized("fast")
    torch.testing.assert_close(out, resize_image(normalize(img, "caffe"), (60, 80)), rtol=0, atol=1e-4)
    with pytest.raises(UserError, match="data.resize: unknown 'pil'"):
        transform_image(img, None, 60, 1000, "imagenet", resize="pil")


@pytest.mark.slow
def test_target_size_is_the_exact_rounded_size():
    """The integer size rule equals ``resized_size(resize_factor(...))`` except where float rounding of an
    exact half goes the wrong way (then it is the exact rational value, halves to even as Python rounds)."""
    mismatches = []
    for scale, max_size in [(600, 1000), (208, 320), (128, 192), (600, 500)]:
        for h in range(1, 700, 7):
            for w in list(range(1, 40, 3)) + [h // 3, h // 2, h - 1, h, h + 1, (3 * h) // 2, 2 * h, 3 * h]:
                w = max(w, 1)
                size = target_size(h, w, scale, max_size)
                if size != resized_size(h, w, resize_factor(h, w, scale, max_size)):
                    mismatches.append((h, w, scale))
                if h > 1 and w > 1:  # the same on int64 tensors (an exported graph's arithmetic)
                    on_tensors = target_size(torch.tensor(h), torch.tensor(w), scale, max_size)
                    assert tuple(int(v) for v in on_tensors) == size
    assert len(mismatches) <= 3, mismatches
    assert target_size(144, 219, 600, 1000) == (600, 912)  # 219 * 600 / 144 = 912.5 exactly: to even
    assert resized_size(144, 219, resize_factor(144, 219, 600, 1000)) == (600, 913)  # floats land above
    assert target_size(375, 500, 600, 1000) == (600, 800) and target_size(100, 1000, 600, 1000) == (100, 1000)
    assert target_size(1, 5000, 600, 1000) == (1, 1000)  # at least one pixel


def test_float_resize_is_the_uint8_resize_unrounded():
    img = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fast, exact = resize_image(img, (61, 90)), resize_image(img, (61, 90), float_resize=True)
    assert fast.dtype == torch.uint8 and exact.dtype == torch.float32 and exact.shape == (3, 61, 90)
    assert (fast.float() - exact).abs().max() <= 1.0  # torch's fixed-point uint8 kernel: within a grey level
    assert resize_image(img, (37, 53), float_resize=True) is img  # no resize, no copy


@pytest.mark.parametrize("normalization", ["imagenet", "caffe"])
def test_graph_input_transform_equals_the_eager_test_path(normalization):
    """The in-graph transform gives the network input, size and original size the API builds eagerly
    (flip_resize in float, batch_images), for shrunk, enlarged and long-side-capped images."""
    transform = GraphInputTransform(128, 192, normalization, 32)
    g = torch.Generator().manual_seed(1)
    for h, w in [(128, 160), (96, 300), (300, 200), (50, 70), (360, 150)]:
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        x, sizes, original = transform(img)
        resized, _, _ = flip_resize(img, None, 128, 192, float_resize=True)
        batch, batch_sizes = batch_images([resized], normalization, 32)
        assert x.shape == batch.shape and sizes.tolist() == [list(batch_sizes[0])] and original.tolist() == [[h, w]]
        torch.testing.assert_close(x, batch, rtol=0, atol=1e-5)
