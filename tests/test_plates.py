"""Plate catalog and color policy: real plates, generated awkward files, rescans, persistence."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from awb_dagster.plates import (
    COLOR_POLICY,
    COLOR_POLICY_DESCRIPTION,
    DEFAULT_MAX_PIXELS,
    SAMPLE_PLATES_DIR,
    CatalogError,
    Plate,
    PlateCatalog,
    PlateError,
    ScanResult,
    decoder_tag,
    load_rgb,
    plate_id_for,
)
from awb_dagster.plates.imaging import to_rgb

SHARED_PLATES = Path(__file__).resolve().parents[2] / "shared" / "plates"
FORBIDDEN_IN_IDS = set("|,[]() ")


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def save_image(path: Path, image: Image.Image, **params: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def noise_image(seed: int, size: tuple[int, int] = (48, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but holds no real pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def scan(folder: Path, **kwargs: Any) -> tuple[PlateCatalog, ScanResult]:
    catalog = PlateCatalog(folder.parent / "home" / "catalog.json")
    return catalog, catalog.scan([folder], **kwargs)


# --- the real plates ---------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_PLATES.is_dir(), reason="../shared/plates is not present")
def test_shared_plates_all_accepted_with_recorded_identity(tmp_path: Path) -> None:
    sources = read_tsv(SHARED_PLATES / "SOURCES.tsv")
    catalog = PlateCatalog(tmp_path / "catalog.json")
    result = catalog.scan([SHARED_PLATES])

    assert result.rejected == []
    assert len(result.added) == len(sources) == 15
    for row in sources:
        plate = catalog.get(plate_id_for(row["filename"]))
        assert plate.sha256 == row["sha256"]
        assert (plate.width, plate.height) == (int(row["width"]), int(row["height"]))
        assert (plate.format, plate.mode) == (row["format"], row["mode"])
        assert plate.n_bytes == int(row["bytes"])
        assert plate.source_paths == (str(SHARED_PLATES / row["filename"]),)
        assert not plate.exif_rotated


def test_sample_plates_scan_cleanly_and_are_credited(tmp_path: Path) -> None:
    credits = {row["filename"]: row for row in read_tsv(SAMPLE_PLATES_DIR / "CREDITS.tsv")}
    images = sorted(p.name for p in SAMPLE_PLATES_DIR.iterdir() if p.name != "CREDITS.tsv")
    catalog = PlateCatalog(tmp_path / "catalog.json")
    result = catalog.scan([SAMPLE_PLATES_DIR])

    assert result.rejected == []
    assert sorted(credits) == images
    assert len(result.added) == len(images)
    total_bytes = 0
    for name, row in credits.items():
        plate = catalog.get(plate_id_for(name))
        assert plate.sha256 == row["sha256"]
        assert max(plate.width, plate.height) <= 640
        assert row["source_repo"] and row["commit"] and row["credit"] and row["derived"]
        assert len(row["original_sha256"]) == 64
        total_bytes += plate.n_bytes
    assert total_bytes < 1_000_000
    modes = {plate.plate_id: plate.mode for plate in catalog.plates.values()}
    assert modes["awkward_grayscale_haeckel_stammbaum_1866"] == "L"
    assert modes["awkward_rgba-transparent_haeckel_radiolarian"] == "RGBA"


# --- color policy ---------------------------------------------------------------------


def test_policy_is_declared() -> None:
    assert COLOR_POLICY_DESCRIPTION.startswith(COLOR_POLICY)
    assert "\n" not in COLOR_POLICY_DESCRIPTION
    for rule in ("exif_transpose", "I;16", "white", "ICC", "CMYK"):
        assert rule in COLOR_POLICY_DESCRIPTION
    assert decoder_tag().startswith("PIL-")


def test_grayscale_plate_normalizes_to_gray_rgb() -> None:
    path = SAMPLE_PLATES_DIR / "AWKWARD_grayscale_haeckel_stammbaum_1866.png"
    rgb = load_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    with Image.open(path) as source:
        gray = np.asarray(source)
    pixels = np.asarray(rgb)
    assert rgb.mode == "RGB" and rgb.size == (gray.shape[1], gray.shape[0])
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray)


def test_rgba_plate_composites_over_white() -> None:
    path = SAMPLE_PLATES_DIR / "AWKWARD_rgba-transparent_haeckel_radiolarian.png"
    rgb = np.asarray(load_rgb(path, max_pixels=DEFAULT_MAX_PIXELS))
    with Image.open(path) as source:
        rgba = np.asarray(source)
    transparent = rgba[..., 3] == 0
    opaque = rgba[..., 3] == 255
    assert transparent.any() and opaque.any()
    assert (rgb[transparent] == 255).all()
    np.testing.assert_array_equal(rgb[opaque], rgba[..., :3][opaque])


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", np.array([[0, 257 * 100, 65535]], dtype=np.uint16), [0, 100, 255]),
        ("I", np.array([[-5, 257 * 7, 70000]], dtype=np.int32), [0, 7, 255]),
        ("F", np.array([[-0.5, 0.5, 2.0]], dtype=np.float32), [0, 128, 255]),
    ],
)
def test_high_bit_grayscale_scaling_rule(
    mode: str, values: np.ndarray, expected: list[int]
) -> None:
    image = Image.fromarray(values)
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :, 0].tolist() == expected
    assert (rgb[..., 0] == rgb[..., 2]).all()


# --- awkward files that are accepted -----------------------------------------------------


def test_cmyk_jpeg_is_accepted_and_converted(tmp_path: Path) -> None:
    red = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    path = save_image(tmp_path / "plates" / "cmyk.jpg", red)
    catalog, result = scan(path.parent)
    assert result.rejected == []
    assert catalog.get("cmyk").mode == "CMYK"
    red = np.asarray(load_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)).astype(int)
    assert np.abs(red - [255, 0, 0]).max() <= 3


def test_16_bit_png_is_accepted_and_scaled(tmp_path: Path) -> None:
    values = np.tile(np.array([0, 257 * 100, 65535], dtype=np.uint16), (4, 1))
    path = save_image(tmp_path / "plates" / "deep.png", Image.fromarray(values))
    catalog, result = scan(path.parent)
    assert result.rejected == []
    assert catalog.get("deep").mode == "I;16"
    rgb = np.asarray(load_rgb(path, max_pixels=DEFAULT_MAX_PIXELS))
    assert rgb[0, :, 1].tolist() == [0, 100, 255]


def test_palette_png_with_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 200, 30])
    image.putpixel((0, 0), 0)
    path = save_image(tmp_path / "plates" / "palette.png", image, transparency=0)
    catalog, result = scan(path.parent)
    assert result.rejected == []
    assert catalog.get("palette").mode == "P"
    rgb = load_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 1)) == (10, 200, 30)


def test_exif_rotated_jpeg_reports_oriented_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save_image(
        tmp_path / "plates" / "rotated.jpg", noise_image(1, (40, 20)), exif=exif.tobytes()
    )
    catalog, result = scan(path.parent)
    assert result.rejected == []
    plate = catalog.get("rotated")
    assert plate.exif_rotated
    assert (plate.width, plate.height) == (20, 40)
    assert load_rgb(path, max_pixels=DEFAULT_MAX_PIXELS).size == (20, 40)


# --- bad files ------------------------------------------------------------------------------


def valid_jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    noise_image(2, (256, 256)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "zero bytes"),
        (
            "notes.jpg",
            b"these are notes, not a picture\n",
            "not an image (cannot identify image file)",
        ),
        ("cut.jpg", valid_jpeg_bytes()[: len(valid_jpeg_bytes()) // 2], "truncated image data"),
    ],
)
def test_bad_file_is_rejected_with_reason(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    folder = tmp_path / "plates"
    folder.mkdir()
    (folder / name).write_bytes(content)
    save_image(folder / "good.png", noise_image(3))
    catalog, result = scan(folder)
    assert [(r.path, r.reason) for r in result.rejected] == [(str(folder / name), reason)]
    assert list(catalog.plates) == ["good"]
    with pytest.raises(PlateError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        load_rgb(folder / name, max_pixels=DEFAULT_MAX_PIXELS)


def test_pixel_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_image(tmp_path / "plates" / "big.png", Image.new("L", (3000, 3000), 7))
    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    catalog, result = scan(path.parent, max_pixels=1_000_000)
    assert decoded == []
    assert catalog.plates == {}
    assert result.rejected[0].reason == (
        "image is 3000x3000 = 9.0e6 pixels, over the 1000000 pixel limit "
        "(raise plates.max_pixels to accept)"
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_header_is_rejected_without_decoding(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    folder.mkdir()
    (folder / "large.png").write_bytes(png_header_only(10_000, 10_000))
    (folder / "bomb.png").write_bytes(png_header_only(90_000, 90_000))
    _, result = scan(folder)
    reasons = {Path(r.path).name: r.reason for r in result.rejected}
    assert reasons["large.png"] == (
        "image is 10000x10000 = 1.0e8 pixels, over the 64000000 pixel limit "
        "(raise plates.max_pixels to accept)"
    )
    assert "decompression-bomb ceiling" in reasons["bomb.png"]
    assert "over the 64000000 pixel limit" in reasons["bomb.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_is_rejected(tmp_path: Path) -> None:
    path = save_image(tmp_path / "plates" / "locked.png", noise_image(4))
    path.chmod(0)
    try:
        _, result = scan(path.parent)
    finally:
        path.chmod(0o644)
    assert [r.reason for r in result.rejected] == ["unreadable: Permission denied"]


def test_folder_with_image_suffix_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    (folder / "odd.jpg").mkdir(parents=True)
    (folder / "odd.jpg" / "inner.png").write_bytes(b"")
    _, result = scan(folder)
    assert [(Path(r.path).name, r.reason) for r in result.rejected] == [("inner.png", "zero bytes")]
    _, flat = scan(folder, recursive=False)
    assert flat.rejected == []


def test_hidden_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    save_image(folder / "kept.png", noise_image(5))
    save_image(folder / ".hidden.png", noise_image(6))
    save_image(folder / ".cache" / "inside.png", noise_image(7))
    (folder / "README.md").write_text("not a plate")
    (folder / "CREDITS.tsv").write_text("filename\n")
    catalog, result = scan(folder)
    assert list(catalog.plates) == ["kept"] and result.rejected == []


def test_truncated_loading_must_stay_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_image(tmp_path / "plates" / "fine.png", noise_image(8))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        scan(path.parent)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        PlateCatalog(tmp_path / "catalog.json").scan([tmp_path / "nowhere"])


# --- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("audubon_p001_wild-turkey.jpg", "audubon_p001_wild-turkey"),
        ("AWKWARD_grayscale Plate.PNG", "awkward_grayscale-plate"),
        ("a|b,c[d](e) f.jpg", "a-b-c-d-e-f"),
        ("Rosa gállica — régalis.tif", "rosa-gallica-regalis"),
        ("--__.jpg", "plate"),
        ("图版.png", "plate"),
    ],
)
def test_plate_id_for(name: str, expected: str) -> None:
    plate_id = plate_id_for(Path("/somewhere") / name)
    assert plate_id == expected
    assert not FORBIDDEN_IN_IDS & set(plate_id)


def test_identical_bytes_are_one_plate_with_two_paths(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    first = save_image(folder / "b-copy.png", noise_image(9))
    second = folder / "a-original.png"
    second.write_bytes(first.read_bytes())
    catalog, result = scan(folder)
    assert len(result.added) == 1
    plate = catalog.get("a-original")
    assert plate.source_paths == (str(second), str(first))
    assert plate.path == second


def test_colliding_ids_get_sha_suffix_and_stay_stable(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    one = save_image(folder / "a" / "plate.png", noise_image(10))
    two = save_image(folder / "b" / "Plate.png", noise_image(11))
    catalog, _ = scan(folder)
    two_sha = hashlib.sha256(two.read_bytes()).hexdigest()
    assert catalog.get("plate").path == one
    assert catalog.get(f"plate-{two_sha[:8]}").path == two

    # A new file sorting first must not take over an id that already names other bytes.
    zero = save_image(folder / "0" / "PLATE.png", noise_image(12))
    result = catalog.scan([folder])
    zero_sha = hashlib.sha256(zero.read_bytes()).hexdigest()
    assert [p.plate_id for p in result.added] == [f"plate-{zero_sha[:8]}"]
    assert catalog.get("plate").path == one
    assert list(catalog.plates) == ["plate", f"plate-{two_sha[:8]}", f"plate-{zero_sha[:8]}"]
    assert all(not FORBIDDEN_IN_IDS & set(plate_id) for plate_id in catalog.plates)


# --- rescans --------------------------------------------------------------------------------


def test_rescan_uses_cache_and_detects_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "plates"
    changing = save_image(folder / "changing.png", noise_image(13))
    save_image(folder / "steady.png", noise_image(14))
    catalog, _ = scan(folder)
    old_sha = catalog.get("changing").sha256
    catalog.save()

    opened: list[object] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    reloaded = PlateCatalog.load(catalog.path)
    result = reloaded.scan([folder])
    assert opened == [] and len(result.unchanged) == 2

    stamp = changing.stat()
    save_image(changing, noise_image(15))
    os.utime(changing, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    result = reloaded.scan([folder])
    assert len(opened) == 1
    assert [p.plate_id for p in result.updated] == ["changing"]
    new_sha = hashlib.sha256(changing.read_bytes()).hexdigest()
    assert reloaded.get("changing").sha256 == new_sha != old_sha
    assert list(reloaded.plates) == ["changing", "steady"]


def test_cached_plate_is_still_checked_against_a_lower_pixel_limit(tmp_path: Path) -> None:
    path = save_image(tmp_path / "plates" / "wide.png", noise_image(16, (100, 20)))
    catalog, _ = scan(path.parent)
    result = catalog.scan([path.parent], max_pixels=1000)
    assert [r.reason for r in result.rejected] == [
        "image is 100x20 = 2.0e3 pixels, over the 1000 pixel limit "
        "(raise plates.max_pixels to accept)"
    ]
    assert [p.plate_id for p in result.missing] == ["wide"]


def test_vanished_file_stays_in_catalog_as_missing(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    gone = save_image(folder / "gone.png", noise_image(17))
    save_image(folder / "kept.png", noise_image(18))
    catalog, _ = scan(folder)
    gone.unlink()
    result = catalog.scan([folder])
    assert [p.plate_id for p in result.missing] == ["gone"]
    assert "gone" in catalog.plates
    assert result.summary() == (
        "1 plates found: 0 added, 0 updated, 1 unchanged; 0 files rejected; 1 known plates missing"
    )


def test_scanning_another_folder_leaves_other_plates_alone(tmp_path: Path) -> None:
    first = save_image(tmp_path / "one" / "first.png", noise_image(19))
    copy = tmp_path / "two" / "copy.png"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    catalog = PlateCatalog(tmp_path / "home" / "catalog.json")
    catalog.scan([first.parent])
    result = catalog.scan([copy.parent])
    assert result.missing == [] and result.added == []
    assert catalog.get("first").source_paths == (str(first), str(copy))
    assert catalog.sources == [str(first.parent), str(copy.parent)]


# --- persistence ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "plates"
    save_image(folder / "z-last.png", noise_image(20))
    save_image(folder / "a-first.png", noise_image(21))
    (folder / "broken.jpg").write_bytes(b"nope")
    catalog, _ = scan(folder)
    catalog.save()
    first_text = catalog.path.read_text()
    written = sorted(p.name for p in catalog.path.parent.iterdir())
    assert written == ["catalog.json", "rejections.json", "thumbnails"]  # no temporary file left behind
    assert all(not p.name.startswith(".") for p in (catalog.path.parent / "thumbnails").iterdir())

    loaded = PlateCatalog.load(catalog.path)
    assert loaded.plates == catalog.plates
    assert list(loaded.plates) == ["a-first", "z-last"]
    assert loaded.sources == [str(folder)]
    assert loaded.rejections == catalog.rejections and len(loaded.rejections) == 1
    loaded.save()
    assert catalog.path.read_text() == first_text
    for plate in loaded.plates.values():
        assert Plate.from_json(json.loads(json.dumps(plate.to_json()))) == plate


def test_load_missing_is_empty_and_corrupt_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    assert PlateCatalog.load(path).plates == {}
    path.write_text("{not json")
    with pytest.raises(CatalogError, match=str(path)):
        PlateCatalog.load(path)
    path.write_text(json.dumps({"format": "awb-plate-catalog/1", "plates": [{"plate_id": "x"}]}))
    with pytest.raises(CatalogError, match="delete it and rescan"):
        PlateCatalog.load(path)


def test_get_unknown_plate_says_how_to_register(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="awb plates add"):
        PlateCatalog(tmp_path / "catalog.json").get("nope")


def test_scan_leaves_a_thumbnail_per_plate_bytes(tmp_path):
    """The scan decodes every new file anyway; each plate's bytes leave a small PNG thumbnail beside
    the catalog, under the rgb-v1 color policy (a transparent palette PNG included)."""
    from PIL import Image

    from awb_dagster.plates.thumbnails import THUMBNAIL_SIDE, thumbnail_path

    folder = tmp_path / "plates"
    folder.mkdir()
    Image.new("RGB", (640, 320), (200, 10, 10)).save(folder / "wide.jpg")
    palette = Image.new("P", (50, 80), 1)
    palette.info["transparency"] = 1
    palette.save(folder / "clear.png")
    catalog, _ = scan(folder)
    assert len(catalog.plates) == 2
    for plate in catalog.plates.values():
        with Image.open(thumbnail_path(catalog.path, plate.sha256)) as thumb:
            assert thumb.format == "PNG"
            assert max(thumb.size) == min(THUMBNAIL_SIDE, max(plate.width, plate.height))
