"""The declared color policy: how any accepted plate file becomes 8-bit RGB pixels.

Every model sees plates through :func:`load_rgb`, so two runs that share
``COLOR_POLICY`` and :func:`decoder_tag` fed identical pixels to their models.
Changing any rule below requires a new ``COLOR_POLICY`` name, because the name
and :data:`COLOR_POLICY_DESCRIPTION` go into every preprocess tag.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import PIL
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError, features

from awb_dagster.hashing import sha256_stream

COLOR_POLICY = "rgb-v1"
COLOR_POLICY_DESCRIPTION = (
    "rgb-v1: first frame only; EXIF orientation applied (ImageOps.exif_transpose); "
    "16-bit grayscale (I;16, I;16L, I;16B, I;16N) and 32-bit integer I clipped to 0..65535 "
    "and scaled v*255/65535 rounded half up; 32-bit float F clipped to 0..1 and scaled "
    "v*255 rounded half up; alpha (RGBA, RGBa, LA, PA, or a transparency key on L/P/RGB) "
    "composited over opaque white; 1, L, P, RGBX, CMYK, YCbCr converted by PIL "
    "Image.convert('RGB'); embedded ICC profiles ignored (stored values used as sRGB)"
)

# Modes decoded to 8-bit grayscale by an explicit scaling rule (PIL's own convert clips).
_HIGH_BIT_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# Modes PIL converts to RGB by a well-defined formula.  LAB and HSV are left out on
# purpose: this policy declares no colorimetric conversion for them, so they are rejected.
_CONVERTIBLE_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBA", "RGBa", "LA", "PA", "RGBX", "CMYK", "YCbCr"}
)
SUPPORTED_MODES = _HIGH_BIT_GRAY_MODES | _CONVERTIBLE_MODES

# EXIF orientations 5-8 transpose the image, so its width and height swap.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class PlateError(Exception):
    """A plate file that cannot be used; ``reason`` says why in plain words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def decoder_tag() -> str:
    """Name the decoder build, since libjpeg builds differ in decoded JPEG pixels."""
    if features.check_feature("libjpeg_turbo"):
        return f"PIL-{PIL.__version__}+libjpeg-turbo-{features.version_feature('libjpeg_turbo')}"
    return f"PIL-{PIL.__version__}+libjpeg-{features.version_codec('jpg')}"


def format_pixel_limit_reason(width: int, height: int, max_pixels: int) -> str:
    """The rejection reason for an image over the pixel limit."""
    mantissa, exponent = f"{width * height:.1e}".split("e")
    return (
        f"image is {width}x{height} = {mantissa}e{int(exponent)} pixels, over the "
        f"{max_pixels} pixel limit (raise plates.max_pixels to accept)"
    )


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) of an opened image."""
    return int(image.getexif().get(ExifTags.Base.Orientation, 1))


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """Width and height after the EXIF orientation is applied, read from the header."""
    width, height = image.size
    if exif_orientation(image) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def open_checked(
    path: str | os.PathLike[str],
    stream: BinaryIO,
    *,
    max_pixels: int,
    draft_min_side: int | None = None,
) -> Image.Image:
    """Open ``stream`` (the bytes of ``path``), refuse it over ``max_pixels``, decode it fully.

    The pixel count is checked from the header, before any pixel data is decoded. With
    ``draft_min_side`` a JPEG is decoded at the largest DCT reduction (1/2, 1/4, 1/8) that
    keeps both sides at least that long; other formats decode at full size.
    Raises :class:`PlateError` with the reason for every failure of the file itself.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported library), "
            "so truncated plates would decode silently; set it back to False"
        )
    try:
        image = Image.open(stream)
    except UnidentifiedImageError as exc:
        raise PlateError(path, "not an image (cannot identify image file)") from exc
    except Image.DecompressionBombError as exc:
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PlateError(
            path,
            f"image is over {ceiling} pixels (Pillow's decompression-bomb ceiling), over the "
            f"{max_pixels} pixel limit (raise plates.max_pixels and PIL.Image.MAX_IMAGE_PIXELS "
            "to accept)",
        ) from exc
    # Pillow's plugins raise many exception types for damaged data (OSError, SyntaxError,
    # ValueError, struct.error, EOFError, ...); each becomes a stated reason, none is dropped.
    except Exception as exc:
        raise _decode_failure(path, exc) from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PlateError(path, format_pixel_limit_reason(width, height, max_pixels))
    if draft_min_side and image.format == "JPEG":
        image.draft(image.mode, (draft_min_side, draft_min_side))
    try:
        image.load()
        image.getexif()  # parsed (and cached) here so damaged EXIF is a rejection too
    except Exception as exc:  # the same variety of decoder exceptions as above
        image.close()
        raise _decode_failure(path, exc) from exc
    if image.mode not in SUPPORTED_MODES:
        image.close()
        raise PlateError(
            path,
            f"mode {image.mode} is not covered by color policy {COLOR_POLICY}; "
            "convert the file to RGB or grayscale",
        )
    return image


def _decode_failure(path: str | os.PathLike[str], exc: Exception) -> PlateError:
    """The :class:`PlateError` for an exception Pillow raised while decoding ``path``."""
    message = str(exc)
    if "truncated" in message.lower():
        return PlateError(path, "truncated image data")
    return PlateError(path, f"cannot decode ({type(exc).__name__}: {message})")


def load_rgb(
    path: str | os.PathLike[str],
    *,
    max_pixels: int,
    expected_sha256: str | None = None,
    draft_min_side: int | None = None,
) -> Image.Image:
    """Decode ``path`` under the color policy and return a new 8-bit RGB image.

    With ``expected_sha256`` the bytes decoded are checked against it, so pixels can
    never be attributed to a catalog record whose file has since changed.
    ``draft_min_side`` allows reduced-scale JPEG decoding (see :func:`open_checked`).
    """
    data = read_plate_bytes(path, expected_sha256)
    with open_checked(
        path, io.BytesIO(data), max_pixels=max_pixels, draft_min_side=draft_min_side
    ) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def read_plate_bytes(path: str | os.PathLike[str], expected_sha256: str | None) -> bytes:
    """The bytes of ``path``, refused when empty, unreadable or (with ``expected_sha256``) changed
    since the catalog scanned them."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PlateError(path, f"unreadable: {exc.strerror or exc}") from exc
    if not data:
        raise PlateError(path, "zero bytes")
    if expected_sha256 is not None:
        actual = sha256_stream(io.BytesIO(data))
        if actual != expected_sha256:
            raise PlateError(
                path,
                f"file changed since it was scanned (sha256 {actual}, catalog has "
                f"{expected_sha256}); rescan the plate folder",
            )
    return data


def load_plate(
    path: str | os.PathLike[str], sha256: str, *, max_pixels: int
) -> tuple[Image.Image, np.ndarray | None]:
    """The plate as RGB under the color policy, and where it is opaque (bool [height, width]; None:
    the file has no alpha). The bytes are read once and checked against ``sha256``."""
    data = read_plate_bytes(path, sha256)
    with open_checked(path, io.BytesIO(data), max_pixels=max_pixels) as image:
        oriented = ImageOps.exif_transpose(image)
        rgb = to_rgb(oriented)
        if not image.has_transparency_data:
            return rgb, None
        alpha = np.asarray(oriented.convert("RGBA"))[..., 3]
    return rgb, alpha > 0


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longest side at most ``max_side``, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply the mode rules of the policy to a decoded, already oriented image."""
    if image.mode in _HIGH_BIT_GRAY_MODES:
        return _scale_to_8bit(image).convert("RGB")
    if image.mode not in _CONVERTIBLE_MODES:
        raise ValueError(f"mode {image.mode} is not covered by color policy {COLOR_POLICY}")
    if image.has_transparency_data:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map 16/32-bit integer or float grayscale to 8-bit L by the declared rule."""
    values = np.asarray(image)
    if image.mode == "F":
        scaled = np.floor(np.clip(values, 0.0, 1.0) * 255.0 + 0.5)
    else:
        clipped = np.clip(values.astype(np.int64), 0, 65535)
        scaled = (clipped * 255 + 32767) // 65535
    return Image.fromarray(scaled.astype(np.uint8))
