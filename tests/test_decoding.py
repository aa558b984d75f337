"""The torchvision JPEG decoder option: pixels against PIL, EXIF orientation, per-plate fallback
and tags, a mixed batch through a tiny embedder, and nvjpeg on a CUDA device."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from awb_dagster.instruments.decoding import (
    EncodedJpeg,
    decode_jpegs,
    orient,
    read_jpeg,
    torch_decodable,
)
from awb_dagster.instruments.embedding import ImageEmbedder, InstrumentError
from awb_dagster.paths import REPO_ROOT
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR, PlateCatalog
from awb_dagster.plates.imaging import PlateError, load_rgb
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin

SHARED_PLATES = REPO_ROOT.parent / "shared" / "plates"
REAL_JPEGS = sorted(SHARED_PLATES.glob("*.jpg"))[:3] + sorted(SAMPLE_PLATES_DIR.glob("*.jpg"))
CPU = torch.device("cpu")


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _torch_pixels(path, device=CPU) -> np.ndarray:
    (pixels,) = decode_jpegs([read_jpeg(path, _sha(path), max_pixels=10**9)], device)
    return pixels.permute(1, 2, 0).cpu().numpy()


@pytest.fixture(scope="module")
def clip(loopback_hub):
    instrument = Registry.load().get("awb-demo/tiny-clip").instrument
    return instrument, capture_pin(instrument, endpoint=loopback_hub.endpoint)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    catalog = PlateCatalog(tmp_path_factory.mktemp("catalog") / "catalog.json")
    catalog.scan([SAMPLE_PLATES_DIR])
    return catalog


@pytest.mark.parametrize("path", REAL_JPEGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_torchvision_cpu_pixels_match_pil_full_size_decode(path):
    ours = _torch_pixels(path)
    pil = np.asarray(load_rgb(path, max_pixels=10**9))
    assert ours.shape == pil.shape
    diff = np.abs(ours.astype(np.int16) - pil.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    image = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).resize((80, 48))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    image.save(path, quality=95, exif=exif)
    assert read_jpeg(path, _sha(path), max_pixels=10**6).orientation == orientation
    ours = _torch_pixels(path)
    pil = np.asarray(load_rgb(path, max_pixels=10**6))
    assert ours.shape == pil.shape
    assert np.abs(ours.astype(np.int16) - pil.astype(np.int16)).max() <= 2


def test_orient_is_exact_on_a_known_grid():
    grid = torch.arange(6).reshape(1, 2, 3)
    pil = Image.fromarray(grid[0].numpy().astype(np.uint8))
    transposes = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                  8: Image.Transpose.ROTATE_90}  # fmt: skip
    for orientation, method in transposes.items():
        expected = np.asarray(pil.transpose(method))
        np.testing.assert_array_equal(orient(grid, orientation)[0].numpy(), expected)


def test_which_plates_take_the_torch_path():
    assert torch_decodable("JPEG", "RGB") and torch_decodable("JPEG", "L")
    for facts in (("JPEG", "CMYK"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("TIFF", "RGB"), (None, None)):
        assert not torch_decodable(*facts)


def test_read_jpeg_refuses_changed_or_mislabelled_files(tmp_path):
    path = tmp_path / "plate.jpg"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    with pytest.raises(PlateError, match="file changed since it was scanned"):
        read_jpeg(path, "0" * 64, max_pixels=10**6)
    with pytest.raises(PlateError, match="pixel limit"):
        read_jpeg(path, _sha(path), max_pixels=100)
    png = tmp_path / "plate.png"
    Image.new("RGB", (16, 16)).save(png)
    with pytest.raises(PlateError, match="not a JPEG the torchvision decoder takes"):
        read_jpeg(png, _sha(png), max_pixels=10**6)


def test_a_jpeg_the_decoder_refuses_is_named(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(good)
    broken = EncodedJpeg(str(tmp_path / "broken.jpg"), torch.tensor([0xFF, 0xD8, 0xFF, 0x00], dtype=torch.uint8), 1)
    with pytest.raises(PlateError, match="broken.jpg.*AWB_DECODER=pil"):
        decode_jpegs([read_jpeg(good, _sha(good), max_pixels=10**6), broken], CPU)


def test_tags_per_decoder_and_fallback(clip):
    pil = ImageEmbedder(*clip, device="cpu")
    torchvision = ImageEmbedder(*clip, device="cpu", decoder="torchvision")
    # The PIL path keeps its tag byte for byte, whichever decoder is declared.
    assert ImageEmbedder(*clip, device="cpu", decoder="pil").preprocess_tag == pil.preprocess_tag
    assert torchvision.preprocess_tag == pil.preprocess_tag
    for facts in (("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "CMYK")):
        assert pil.tag_for(*facts) == pil.preprocess_tag
    jpeg_tag = torchvision.tag_for("JPEG", "RGB")
    assert jpeg_tag != pil.preprocess_tag
    assert jpeg_tag.startswith("dec=torchvision-") and "+libjpeg@cpu;draft=none;color=rgb-v1;" in jpeg_tag
    # Everything after the decoder and draft is the same pipeline.
    assert jpeg_tag.split(";", 2)[2] == pil.preprocess_tag.split(";", 2)[2]
    assert torchvision.tag_for("JPEG", "L") == jpeg_tag
    for facts in (("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "CMYK")):
        assert torchvision.tag_for(*facts) == pil.preprocess_tag
    described = torchvision.describe()
    assert described["decoder"] == "torchvision" and described["torchvision_preprocess_tag"] == jpeg_tag
    assert pil.describe()["decoder"] == "pil"
    with pytest.raises(InstrumentError, match="decoder must be one of pil, torchvision"):
        ImageEmbedder(*clip, device="cpu", decoder="nvjpeg")


@pytest.mark.parametrize("on_device", [False, True], ids=["workers", "batched"])
def test_mixed_batch_embeds_like_full_size_pil(clip, catalog, on_device):
    plates = list(catalog.plates.values())
    assert {(p.format, p.mode) for p in plates} >= {("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGBA")}
    ours = ImageEmbedder(*clip, device="cpu", decoder="torchvision", preprocess_on_device=on_device)
    full = ImageEmbedder(*clip, device="cpu", jpeg_draft=False, preprocess_on_device=on_device)
    items = [
        ours.load_plate(p.path, p.sha256, max_pixels=10**8, plate_format=p.format, plate_mode=p.mode) for p in plates
    ]
    vectors = ours.embed(ours.pixel_values(items))
    expected = full.embed(full.pixel_values([full.load_plate(p.path, p.sha256, max_pixels=10**8) for p in plates]))
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-4)
    # Without catalog facts the plate goes through PIL, under the tag that says so.
    assert ours.tag_for(None, None) == ours.preprocess_tag


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_batch_on_cuda(clip, catalog, tmp_path):
    cuda = torch.device("cuda")
    gray = tmp_path / "gray.jpg"
    Image.open(SAMPLE_PLATES_DIR / "audubon_p001_wild-turkey.jpg").convert("L").save(gray, quality=92)
    paths = REAL_JPEGS + [gray] + sorted(SHARED_PLATES.glob("AWKWARD_*.jpg"))  # progressive, grayscale
    items = [read_jpeg(p, _sha(p), max_pixels=10**9) for p in paths]
    on_gpu = decode_jpegs(items, cuda)
    # nvjpeg and libjpeg-turbo differ in IDCT and chroma upsampling, at the engraving's hard edges most
    # (the nvjpeg tag says which decoder made a record's pixels). First H200 run (torchvision 0.26,
    # CUDA 13): p001 mean 0.92, 99.9th percentile 18, max 36; the bound is the same picture, not equality.
    stats = {}
    for path, pixels in zip(paths, on_gpu):
        assert pixels.device.type == "cuda"
        cpu = _torch_pixels(path).astype(np.int16)
        gpu = pixels.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        assert gpu.shape == cpu.shape, path
        diff = np.abs(gpu - cpu)
        stats[path.name] = (round(float(diff.mean()), 3), float(np.percentile(diff, 99.9)), int(diff.max()))
    print("nvjpeg vs libjpeg-turbo |diff| (mean, p99.9, max):", stats)
    assert all(mean < 1.5 and p999 <= 32 for mean, p999, _ in stats.values()), stats

    ours = ImageEmbedder(*clip, device="cuda", dtype="float32", decoder="torchvision")
    assert "+nvjpeg-cuda" in ours.tag_for("JPEG", "RGB") and "@cuda" in ours.tag_for("JPEG", "RGB")
    plates = list(catalog.plates.values())
    mixed = [ours.load_plate(p.path, p.sha256, max_pixels=10**8, plate_format=p.format, plate_mode=p.mode) for p in plates]
    assert any(isinstance(item, EncodedJpeg) for item in mixed) and any(isinstance(item, torch.Tensor) for item in mixed)
    vectors = ours.embed(ours.pixel_values(mixed))
    full = ImageEmbedder(*clip, device="cuda", dtype="float32", jpeg_draft=False)
    expected = full.embed(full.pixel_values([full.load_plate(p.path, p.sha256, max_pixels=10**8) for p in plates]))
    cos = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert (cos > 0.999).all(), cos


def test_buffer_round_trip_reads_what_was_written(tmp_path):
    # read_jpeg keeps the exact file bytes (the decoder sees what was hashed).
    path = tmp_path / "p.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    assert bytes(read_jpeg(path, _sha(path), max_pixels=10**6).data.numpy()) == buffer.getvalue()


def test_torch_resource_declares_the_decoder():
    import pydantic

    from awb_dagster.resources.instruments import TorchResource

    assert TorchResource().decoder == "pil"
    assert TorchResource(decoder="torchvision").decoder == "torchvision"
    with pytest.raises(pydantic.ValidationError, match="decoder"):
        TorchResource(decoder="nvjpeg")
