"""The image normaliser: every mode, awkward file, resize policy and size becomes uint8 (H, W, 3) or ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genre_core.data.images import image_info, ImageError, is_image_file, load_rgb, parse_size


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Save a Pillow image to bytes in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def halves(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(array, "RGB")


# ----------------------------------------------------------------------------------------------------------
# Modes


def test_mode_1_bilevel_becomes_black_and_white_rgb():
    image = Image.new("1", (4, 3), 0)
    image.putpixel((0, 0), 1)
    array = load_rgb(encode(image, "PNG"))
    assert array.shape == (3, 4, 3) and array.dtype == np.uint8
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[1, 1].tolist() == [0, 0, 0]


def test_mode_l_grey_is_copied_to_three_channels():
    array = load_rgb(encode(Image.new("L", (5, 4), 77), "PNG"))
    assert array.shape == (4, 5, 3)
    assert (array == 77).all()


def test_mode_la_transparent_pixels_composite_on_white():
    image = Image.new("LA", (4, 4), (10, 255))
    image.putpixel((0, 0), (10, 0))
    array = load_rgb(encode(image, "PNG"))
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[2, 2].tolist() == [10, 10, 10]


def test_mode_p_with_transparency_composites_on_white():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    image.putpixel((0, 0), 0)
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    array = load_rgb(data)
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[3, 3].tolist() == [200, 30, 40]


def test_mode_p_without_transparency_keeps_palette_colours():
    image = Image.new("P", (3, 3), 1)
    image.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    assert load_rgb(encode(image, "PNG"))[1, 1].tolist() == [12, 34, 56]


def test_mode_rgba_half_transparent_red_blends_with_white():
    array = load_rgb(encode(Image.new("RGBA", (2, 2), (255, 0, 0, 128)), "PNG"))
    red, green, blue = array[0, 0].tolist()
    assert red == 255
    assert abs(green - 127) <= 1 and abs(blue - 127) <= 1


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_mode_cmyk_pure_cyan_becomes_rgb_cyan(fmt):
    data = encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixel = load_rgb(data)[4, 4].astype(int)
    assert pixel[0] < 20 and pixel[1] > 235 and pixel[2] > 235


def test_mode_cmyk_jpeg_with_resize_goes_through_draft_path():
    data = encode(Image.new("CMYK", (200, 100), (0, 255, 0, 0)), "JPEG", quality=100)
    array = load_rgb(data, 24)
    assert array.shape == (24, 24, 3)
    red, green, blue = array[12, 12].astype(int)
    assert red > 235 and green < 20 and blue > 235  # magenta


def test_mode_i16_keeps_the_top_byte():
    array16 = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    image = Image.fromarray(array16)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    array = load_rgb(data)
    assert array[:, :, 0].tolist() == [[0, 100], [255, 200]]
    assert (array[:, :, 0] == array[:, :, 2]).all()


def test_mode_i_32_bit_small_values_are_kept():
    image = Image.fromarray(np.array([[0, 50], [100, 255]], dtype=np.int32))
    array = load_rgb(encode(image, "TIFF"))
    assert array[:, :, 1].tolist() == [[0, 50], [100, 255]]


def test_mode_f_floats_in_unit_range_are_scaled():
    image = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert load_rgb(data)[:, :, 0].tolist() == [[0, 128], [255, 64]]


def test_mode_f_with_nan_does_not_crash():
    image = Image.fromarray(np.array([[np.nan, 2.0], [300.0, -5.0]], dtype=np.float32))
    array = load_rgb(encode(image, "TIFF"))
    assert array[:, :, 0].tolist() == [[0, 2], [255, 0]]


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (10, 10), (255, 0, 0)), Image.new("RGB", (10, 10), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert image_info(data)["frames"] == 2
    pixel = load_rgb(data)[5, 5].astype(int)
    assert pixel[0] > 200 and pixel[2] < 50


def test_animated_gif_first_frame_even_if_file_object_was_advanced():
    frames = [Image.new("RGB", (6, 6), (0, 255, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixel = load_rgb(io.BytesIO(data), 4)[2, 2].astype(int)
    assert pixel[1] > 200 and pixel[2] < 50


@pytest.mark.parametrize("size", [None, 8])
def test_exif_rotated_jpeg_is_turned_upright(size):
    # A 40x20 landscape whose EXIF says "rotate 90 degrees clockwise to display" (orientation 6) is portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves(40, 20), "JPEG", exif=exif, quality=95)
    array = load_rgb(data, size)
    if size is None:
        assert array.shape == (40, 20, 3)
        # Rotating clockwise puts the left (red) half on top.
        top, bottom = array[5, 10].astype(int), array[35, 10].astype(int)
    else:
        assert array.shape == (8, 8, 3)
        top, bottom = array[1, 4].astype(int), array[6, 4].astype(int)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_large_jpeg_with_draft_still_gives_exact_target_size():
    data = encode(halves(1600, 900), "JPEG", quality=80)
    assert load_rgb(data, (224, 224)).shape == (224, 224, 3)
    assert load_rgb(data, (300, 100), "crop").shape == (100, 300, 3)


# ----------------------------------------------------------------------------------------------------------
# Broken and awkward files


def test_truncated_jpeg_raises_image_error_naming_the_file(tmp_path):
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as error:
        load_rgb(path)
    assert "truncated.jpg" in str(error.value)
    assert "truncated" in error.value.reason or "corrupt" in error.value.reason


def test_zero_byte_file_raises_image_error(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file \(0 bytes\)"):
        load_rgb(path)
    with pytest.raises(ImageError, match="empty file"):
        load_rgb(b"", name="upload.png")


def test_not_an_image_raises_image_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        load_rgb(path)


def test_missing_file_and_folder_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "absent.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_rgb(tmp_path)


def test_image_error_is_a_value_error_with_name_and_reason():
    error = ImageError("a.png", "broken")
    assert isinstance(error, ValueError)
    assert (error.name, error.reason, str(error)) == ("a.png", "broken", "a.png: broken")


def test_pixel_cap_is_enforced():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="over the limit|too many pixels"):
        load_rgb(data, max_pixels=5000)
    assert load_rgb(data, max_pixels=10_000).shape == (100, 100, 3)


def test_one_pixel_image_loads_and_resizes():
    data = encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG")
    assert load_rgb(data).tolist() == [[[9, 8, 7]]]
    for policy in ("squash", "crop", "letterbox"):
        array = load_rgb(data, 32, policy)
        assert array.shape == (32, 32, 3)
    assert (load_rgb(data, 32, "squash") == [9, 8, 7]).all()


@pytest.mark.parametrize("shape", [(2000, 3), (3, 2000)])
@pytest.mark.parametrize("policy", ["squash", "crop", "letterbox"])
def test_extreme_aspect_ratio_gives_target_size(shape, policy):
    data = encode(Image.new("RGB", shape, (200, 100, 50)), "PNG")
    array = load_rgb(data, (32, 24), policy)
    assert array.shape == (24, 32, 3) and array.dtype == np.uint8
    # The painting never vanishes into padding (ImageOps.pad shrank a 2000x3 strip to zero rows).
    painted = (array == [200, 100, 50]).all(axis=2)
    assert painted.any()
    assert painted[:, 16].any() if shape[0] > shape[1] else painted[12, :].any()


# ----------------------------------------------------------------------------------------------------------
# Resize policies and sizes


def test_squash_stretches_the_whole_image():
    array = load_rgb(encode(halves(40, 20), "PNG"), 20, "squash")
    assert array.shape == (20, 20, 3)
    assert array[10, 2].tolist() == [255, 0, 0] and array[10, 17].tolist() == [0, 0, 255]


def test_crop_takes_the_centre():
    # The centre 20x20 of a 40x20 picture is half red, half blue; a 60x20 one (red | blue | red) is all blue.
    assert load_rgb(encode(halves(40, 20), "PNG"), 20, "crop")[10, 2].tolist() == [255, 0, 0]
    three = np.zeros((20, 60, 3), np.uint8)
    three[:, :20] = three[:, 40:] = (255, 0, 0)
    three[:, 20:40] = (0, 0, 255)
    array = load_rgb(encode(Image.fromarray(three), "PNG"), 20, "crop")
    assert (array[:, 2:18] == [0, 0, 255]).all()


def test_letterbox_pads_with_the_pad_colour():
    array = load_rgb(encode(halves(40, 20), "PNG"), 20, "letterbox", pad_color=(1, 2, 3))
    assert array.shape == (20, 20, 3)
    assert array[0, 10].tolist() == [1, 2, 3] and array[19, 10].tolist() == [1, 2, 3]
    assert array[10, 2].tolist() == [255, 0, 0] and array[10, 17].tolist() == [0, 0, 255]


@pytest.mark.parametrize("size, expected", [((30, 20), (20, 30, 3)), ((20, 30), (30, 20, 3)), ("48x16", (16, 48, 3))])
@pytest.mark.parametrize("policy", ["squash", "crop", "letterbox"])
def test_non_square_sizes_are_width_by_height(size, expected, policy):
    assert load_rgb(encode(halves(), "PNG"), size, policy).shape == expected


def test_unknown_policy_is_a_value_error():
    with pytest.raises(ValueError, match="resize policy 'stretch'"):
        load_rgb(encode(halves(), "PNG"), 10, "stretch")


def test_parse_size_forms_and_errors():
    assert parse_size(224) == (224, 224)
    assert parse_size("300x400") == (300, 400)
    assert parse_size(" 64 ") == (64, 64)
    assert parse_size((30, 20)) == (30, 20)
    for bad in ("0", "abc", "1x2x3", 5000, (0, 10), "-3"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_load_from_path_bytes_and_file_object_agree(tmp_path):
    path = tmp_path / "picture.png"
    halves().save(path)
    from_path = load_rgb(path, 16)
    assert (from_path == load_rgb(path.read_bytes(), 16)).all()
    with open(path, "rb") as handle:
        assert (from_path == load_rgb(handle, 16)).all()


def test_image_info_reads_the_header():
    info = image_info(encode(Image.new("RGBA", (7, 5)), "PNG"))
    assert info == {"width": 7, "height": 5, "mode": "RGBA", "format": "PNG", "frames": 1}


def test_is_image_file():
    assert is_image_file("a/B.JPG") and is_image_file("x.webp") and is_image_file("x.tiff")
    assert not is_image_file("notes.txt") and not is_image_file("archive.parquet")


# ----------------------------------------------------------------------------------------------------------
# Property-based: any mode, size and policy gives uint8 (H, W, 3) of the target size


MODE_FORMATS = {
    "1": "PNG", "L": "PNG", "LA": "PNG", "P": "PNG", "RGB": "PNG", "RGBA": "PNG", "I;16": "PNG",
    "CMYK": "TIFF", "I": "TIFF", "F": "TIFF", "YCbCr": "JPEG", "PA": "TIFF",
}


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """A noisy image in `mode` (built from random RGBA, converted)."""
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, (height, width))
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        image = Image.fromarray(values.astype(dtype))
        assert image.mode == mode
        return image
    if mode == "PA":
        return rgba.convert("P").convert("PA")
    if mode == "YCbCr":
        return rgba.convert("RGB").convert("YCbCr")
    return rgba.convert(mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(sorted(MODE_FORMATS)),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    target=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    policy=st.sampled_from(["squash", "crop", "letterbox"]),
    seed=st.integers(0, 1000),
)
def test_any_mode_size_and_policy_gives_uint8_rgb_of_the_target_size(mode, width, height, target, policy, seed):
    data = encode(random_image(mode, width, height, seed), MODE_FORMATS[mode])
    array = load_rgb(data, target, policy)
    assert array.dtype == np.uint8
    assert array.shape == (target[1], target[0], 3)
    unresized = load_rgb(data)
    assert unresized.shape == (height, width, 3) and unresized.dtype == np.uint8


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_an_array_or_image_error(data):
    try:
        array = load_rgb(data, 8)
    except ImageError:
        return
    assert array.shape == (8, 8, 3) and array.dtype == np.uint8
