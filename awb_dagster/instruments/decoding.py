"""JPEG decoding with torchvision (``decode_jpeg``): libjpeg on the CPU, nvjpeg batched on CUDA.

The declared alternative to PIL decoding for plate embeddings. Worker threads only read the
bytes, check them against the catalog's sha256 and read the header (size, EXIF orientation);
the pixels are decoded in batches where the processor runs. Which plates this path takes is
decided from the catalog facts alone (:func:`torch_decodable`: JPEG in mode RGB or L), so a
plate's preprocess tag is known before it is decoded; every other plate goes through PIL.

Under color policy rgb-v1 the two paths agree on everything but the decoder itself: first
frame, EXIF orientation applied (here by exact flips and transposes of the decoded tensor),
grayscale replicated to RGB, ICC profiles ignored, no DCT-reduced (draft) decoding.
No Dagster here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from awb_dagster.plates.imaging import PlateError, exif_orientation, format_pixel_limit_reason, read_plate_bytes

DECODERS = ("pil", "torchvision")
# Catalog (format, mode) pairs decode_jpeg turns into the same RGB as rgb-v1 (up to the decoder
# build): 3-channel YCbCr/RGB JPEGs and 1-channel grayscale JPEGs (replicated to RGB). CMYK and
# YCCK JPEGs are left to PIL: the Adobe inversion and CMYK->RGB formula differ between libraries.
TORCH_JPEG_MODES = frozenset({"RGB", "L"})


def torch_decodable(plate_format: str | None, plate_mode: str | None) -> bool:
    """Whether a plate with these catalog facts takes the torchvision path."""
    return plate_format == "JPEG" and plate_mode in TORCH_JPEG_MODES


def torch_decoder_tag(device: torch.device) -> str:
    """The decoder as preprocess tags name it: torchvision build plus the JPEG library of the
    device kind (torchvision's wheels bundle libjpeg and nvjpeg, fixed by its version)."""
    import torchvision

    if device.type == "cuda":
        return f"torchvision-{torchvision.__version__}+nvjpeg-cuda{torch.version.cuda}@cuda"
    return f"torchvision-{torchvision.__version__}+libjpeg@cpu"


@dataclass(frozen=True)
class EncodedJpeg:
    """A plate's verified JPEG bytes, waiting for a batched decode."""

    path: str
    data: torch.Tensor  # uint8 [n_bytes], on the CPU
    orientation: int  # EXIF orientation, 1 = upright


def read_jpeg(path: str | os.PathLike[str], sha256: str, *, max_pixels: int) -> EncodedJpeg:
    """Read ``path``, check its bytes against the catalog's ``sha256`` and its header (a JPEG in
    a mode of :data:`TORCH_JPEG_MODES`, within ``max_pixels``). Decodes no pixels.
    Raises :class:`PlateError` naming the file and what to do."""
    data = read_plate_bytes(path, sha256)
    try:
        with Image.open(io.BytesIO(data)) as header:
            kind, mode, (width, height) = header.format, header.mode, header.size
            orientation = exif_orientation(header)
    except Exception as exc:  # Pillow raises many types for damaged headers; each is a stated reason
        raise PlateError(path, f"cannot read the JPEG header ({type(exc).__name__}: {exc})") from exc
    if not torch_decodable(kind, mode):
        raise PlateError(
            path,
            f"is {kind} mode {mode}, not a JPEG the torchvision decoder takes "
            f"(modes {', '.join(sorted(TORCH_JPEG_MODES))}); rescan the plate folder so the catalog "
            "facts match the file",
        )
    if width * height > max_pixels:
        raise PlateError(path, format_pixel_limit_reason(width, height, max_pixels))
    return EncodedJpeg(str(path), torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation)


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to [C, H, W] pixels exactly as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:  # mirrored
        return pixels.flip(-1)
    if orientation == 3:  # rotated 180
        return pixels.flip(-2, -1)
    if orientation == 4:  # mirrored vertically
        return pixels.flip(-2)
    if orientation == 5:  # PIL TRANSPOSE
        return pixels.transpose(-2, -1)
    if orientation == 6:  # PIL ROTATE_270 (clockwise)
        return pixels.rot90(-1, dims=(-2, -1))
    if orientation == 7:  # PIL TRANSVERSE
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # PIL ROTATE_90 (counter-clockwise)
        return pixels.rot90(1, dims=(-2, -1))
    return pixels


def decode_jpegs(items: Sequence[EncodedJpeg], device: torch.device) -> list[torch.Tensor]:
    """Decode ``items`` to uint8 RGB [3, H, W] on ``device`` (one batched call; nvjpeg on CUDA),
    oriented upright. A batch the decoder refuses is retried plate by plate so the error names
    every file it cannot decode."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not items:
        return []
    try:
        decoded = decode_jpeg([item.data for item in items], mode=ImageReadMode.RGB, device=device)
    except RuntimeError as batch_error:
        failed = []
        for item in items:
            try:
                decode_jpeg(item.data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as exc:
                failed.append(f"{item.path}: {exc}")
        if not failed:
            raise
        raise PlateError(
            failed[0].split(": ", 1)[0],
            f"torchvision decode_jpeg on {device} failed for {len(failed)} plate(s): "
            + "; ".join(failed)
            + ". Run with the PIL decoder (AWB_DECODER=pil) for these plates",
        ) from batch_error
    return [orient(pixels, item.orientation) for pixels, item in zip(decoded, items)]


def decode_jpeg_to_pil(item: EncodedJpeg) -> Image.Image:
    """One plate decoded on the CPU (libjpeg), oriented, as an RGB PIL image for processors
    that take PIL images."""
    (pixels,) = decode_jpegs([item], torch.device("cpu"))
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
