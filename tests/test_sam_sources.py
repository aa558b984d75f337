"""SAM from more sources: SAM-HQ through the SAM adapter and the sam_pins partition, and the
original segment-anything checkpoints pinned by the sha256 of their weight file.

Everything is served by the loopback hub: the tiny SAM-HQ demo repo, and a tiny checkpoint in
segment-anything's own ``.pth`` format published as a plain file (``/files/<name>``) that
``$AWB_WEIGHTS_MIRROR`` points at. No test touches the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest
import torch
from pycocotools import mask as mask_utils

from awb_dagster.constants import SAM_FAMILIES
from awb_dagster.demo.tiny_sam_original import build_tiny_original_sam
from awb_dagster.instruments.amg import GeneratorSettings
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.sam import ARCHITECTURES, MaskGenerator
from awb_dagster.plates.imaging import load_plate
from awb_dagster.provenance.rows import mask_rows
from awb_dagster.partitions import pins_partition_families, pins_partitions
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.registry.lock import Pin, PinLock
from awb_dagster.registry import Instrument, Registry, RegistryError
from awb_dagster.registry.pins import capture_pin
from awb_dagster.registry.weight_files import (
    WEIGHTS_MIRROR_ENV,
    WeightFileError,
    WeightShaMismatchError,
    fetch_weight_file,
)

if TYPE_CHECKING:
    from conftest import HubFixture

PERMISSIVE = {"points_per_side": 4, "points_per_batch": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "box_nms_thresh": 0.99, "max_working_side": 128}  # fmt: skip
PLATE = SAMPLE_PLATES_DIR / "audubon_p026_carolina-parrot.jpg"
ORIGINAL_FILE = "sam_vit_b_01ec64.pth"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load()


def _decoded_rows(generator: MaskGenerator, plate: Path) -> tuple[list[dict], tuple[int, int]]:
    """Mask records of ``plate`` and the plate's (height, width)."""
    sha = hashlib.sha256(plate.read_bytes()).hexdigest()
    image, opaque = load_plate(plate, sha, max_pixels=50_000_000)
    rows = mask_rows(
        generator.generate(image, opaque), plate_id=plate.stem, plate_sha256=sha, model_id=generator.instrument.id,
        model_sha=generator.pin.sha, pin_key=generator.pin.key, preprocess_tag=generator.preprocess_tag, run_id="r",
    )  # fmt: skip
    return rows, (image.height, image.width)


def _assert_masks_decode_to(rows: list[dict], size: tuple[int, int]) -> None:
    assert rows, "permissive filters keep at least one mask"
    for row in rows:
        mask = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"].encode("ascii")})
        assert mask.shape == size and row["area"] == mask.sum() > 0


# --- SAM-HQ -----------------------------------------------------------------------------------


def test_the_sam_adapter_runs_every_sam_family_and_sam_pins_lists_them() -> None:
    assert set(ARCHITECTURES) == set(SAM_FAMILIES) == {"sam", "sam-hq"}
    assert pins_partition_families[pins_partitions["sam"].name] == SAM_FAMILIES
    assert pins_partition_families[pins_partitions["clip"].name] == ("clip",)


@pytest.fixture(scope="module")
def hq_generator(loopback_hub: HubFixture, registry: Registry, tmp_path_factory) -> MaskGenerator:
    instrument = registry.get("awb-demo/tiny-sam-hq").instrument
    pin = capture_pin(instrument, endpoint=loopback_hub.endpoint)
    cache = tmp_path_factory.mktemp("hq-cache")
    return MaskGenerator(instrument, pin, GeneratorSettings(**PERMISSIVE), device="cpu", cache_dir=cache)


def test_sam_hq_masks_decode_to_plate_size(hq_generator: MaskGenerator) -> None:
    rows, size = _decoded_rows(hq_generator, PLATE)
    _assert_masks_decode_to(rows, size)
    # SAM-HQ's generator keeps one mask per prompt (best of the multimask output + the HQ mask).
    assert len(rows) <= PERMISSIVE["points_per_side"] ** 2


def test_sam_hq_names_its_model_class(hq_generator: MaskGenerator) -> None:
    described = hq_generator.describe()
    assert (described["model_class"], described["processor_class"]) == ("SamHQModel", "SamHQProcessor")
    assert described["family"] == "sam-hq"
    assert "model=SamHQModel:hub-safetensors:out=best-of-multimask+hq-token;" in hq_generator.preprocess_tag


def test_a_sam_hq_repo_is_refused_as_sam(hq_generator: MaskGenerator) -> None:
    # A roster entry naming the wrong family must not load SamModel with random decoder weights.
    as_sam = dataclasses.replace(hq_generator.instrument, family="sam")
    with pytest.raises(InstrumentError, match=r"SamHQConfig \('sam_hq'\).*runs SamModel; fix the family"):
        MaskGenerator(as_sam, hq_generator.pin, GeneratorSettings(**PERMISSIVE), device="cpu")


def test_sam_pins_lists_sam_hq_pins_and_sam_masks_runs_them(loopback_hub: HubFixture, tmp_path: Path) -> None:
    from awb_dagster.assets.plates import scan_plates, sync_partitions, wanted_partition_keys
    from awb_dagster.definitions import build_definitions
    from awb_dagster.instance import open_instance
    from awb_dagster.paths import HomePaths
    from awb_dagster.resources import AwbHome
    from awb_dagster.runner import materialize_masks

    paths = HomePaths(tmp_path / "home")
    registry = Registry.load(lock_path=paths.lock)
    lock = PinLock()
    pins = [capture_pin(registry.get(name).instrument, endpoint=loopback_hub.endpoint)
            for name in ("awb-demo/tiny-sam", "awb-demo/tiny-sam-hq")]  # fmt: skip
    for pin in pins:
        lock.add(pin)
    paths.root.mkdir(parents=True)
    lock.save(paths.lock)
    plates_dir = tmp_path / "plates"
    plates_dir.mkdir()
    shutil.copy(PLATE, plates_dir / PLATE.name)
    home = AwbHome(home=str(paths.root))
    catalog, _ = scan_plates(home, [plates_dir])
    assert wanted_partition_keys(home)["sam_pins"] == [pin.key for pin in pins]
    instance = open_instance(paths)
    assert sync_partitions(instance, home)["sam_pins"] == [pin.key for pin in pins]

    defs = build_definitions(home=str(paths.root), endpoint=loopback_hub.endpoint, offline=False)
    hq_key = pins[1].key
    runs = materialize_masks(defs, instance, hq_key, config=PERMISSIVE)
    assert len(runs) == 1 and runs[0].success
    (pair,) = home.store().sealed_pairs(hq_key).values()
    plate = catalog.plates[pair.plate_id]
    _assert_masks_decode_to(pq.read_table(pair.artifact_path).to_pylist(), (plate.height, plate.width))
    manifest = json.loads((pair.artifact_path.parent / "run.manifest.json").read_text())
    assert manifest["instruments"][0]["model_class"] == "SamHQModel"


# --- original segment-anything checkpoints ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OriginalSource:
    instrument: Instrument  # the roster's sam_vit_b, declaring the tiny file's sha256
    sha256: str
    mirror: str


@pytest.fixture(scope="module")
def original(loopback_hub: HubFixture, registry: Registry) -> OriginalSource:
    sha = loopback_hub.hub.add_file(ORIGINAL_FILE, build_tiny_original_sam())
    instrument = dataclasses.replace(registry.get("sam_vit_b").instrument, file_sha256=sha)
    return OriginalSource(instrument, sha, f"{loopback_hub.endpoint}/files")


@pytest.fixture
def mirror(original: OriginalSource, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(WEIGHTS_MIRROR_ENV, original.mirror)
    return original.mirror


def test_original_checkpoint_entries(registry: Registry) -> None:
    expected = {
        "sam_vit_b": ("sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
        "sam_vit_l": ("sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
        "sam_vit_h": ("sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    }
    for model_id, (file, sha) in expected.items():
        inst = registry.get(model_id).instrument
        assert (inst.source, inst.family, inst.license, inst.sealed_runs) == ("url", "sam", "apache-2.0", True)
        assert inst.url == f"https://dl.fbaipublicfiles.com/segment_anything/{file}"
        assert (inst.weight_file, inst.file_sha256) == (file, sha)


def test_pin_records_the_weight_file_sha256(
    loopback_hub: HubFixture, original: OriginalSource, mirror: str, tmp_path: Path
) -> None:
    def downloads() -> int:
        return sum(path == f"/files/{ORIGINAL_FILE}" for _, path in loopback_hub.hub.request_log)

    before = downloads()
    pin = capture_pin(original.instrument, weights_dir=tmp_path)
    assert downloads() == before + 1
    path = tmp_path / original.sha256 / ORIGINAL_FILE
    assert path.read_bytes() == build_tiny_original_sam()
    assert (pin.model_id, pin.sha, pin.revision_requested, pin.endpoint) == (
        "sam_vit_b", original.sha256, ORIGINAL_FILE, mirror
    )
    assert pin.key == f"sam-vit-b-original@{original.sha256[:10]}" and pin.license == "apache-2.0"
    lock = PinLock()
    assert lock.add(pin)
    assert Pin.from_json(json.loads(json.dumps(pin.to_json()))) == pin  # the lock round-trips it
    # Pinning again finds the verified file under the weights folder: no second download.
    assert capture_pin(original.instrument, weights_dir=tmp_path).sha == pin.sha
    assert downloads() == before + 1


def test_a_wrong_sha256_names_the_file_both_shas_and_what_to_do(
    original: OriginalSource, mirror: str, registry: Registry, tmp_path: Path
) -> None:
    declared = registry.get("sam_vit_b").instrument  # the real file's sha256, not the tiny file's
    with pytest.raises(WeightShaMismatchError) as caught:
        capture_pin(declared, weights_dir=tmp_path)
    message = str(caught.value)
    assert f"{mirror}/{ORIGINAL_FILE}" in message and ORIGINAL_FILE in message
    assert original.sha256 in message and declared.file_sha256 in message
    assert "roster.toml" in message and "was not kept" in message
    assert not list(tmp_path.rglob(ORIGINAL_FILE)) and not list(tmp_path.rglob("*.part"))


def test_a_weight_file_changed_on_disk_is_refused(original: OriginalSource, mirror: str, tmp_path: Path) -> None:
    path = fetch_weight_file(original.instrument, original.sha256, weights_dir=tmp_path)
    content = path.read_bytes()
    path.write_bytes(content[:100] + bytes([content[100] ^ 0xFF]) + content[101:])
    expected = rf"{path}: sha256 is [0-9a-f]{{64}}, expected {original.sha256}.*delete it"
    with pytest.raises(WeightShaMismatchError, match=expected):
        fetch_weight_file(original.instrument, original.sha256, weights_dir=tmp_path)


def test_offline_without_the_file_says_where_to_put_it(original: OriginalSource, mirror: str, tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match=rf"{ORIGINAL_FILE} .* is not at .* offline mode is on"):
        fetch_weight_file(original.instrument, original.sha256, weights_dir=tmp_path, offline=True)


def test_an_unknown_file_on_the_mirror_is_an_http_error(original: OriginalSource, mirror: str, tmp_path: Path) -> None:
    missing = dataclasses.replace(original.instrument, url="https://example.invalid/segment_anything/absent.pth")
    with pytest.raises(WeightFileError, match=r"absent\.pth answered HTTP 404"):
        fetch_weight_file(missing, original.sha256, weights_dir=tmp_path)


def test_masks_from_the_original_checkpoint(
    original: OriginalSource, mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = capture_pin(original.instrument, weights_dir=tmp_path)
    loads: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    generator = MaskGenerator(
        original.instrument, pin, GeneratorSettings(**PERMISSIVE), device="cpu", weights_dir=tmp_path,
        local_files_only=True,  # the pinned file is in the weights folder: no download
    )  # fmt: skip
    assert loads and all(kwargs.get("weights_only") is True for kwargs in loads)
    described = generator.describe()
    assert (described["model_class"], described["weights_format"]) == ("SamModel", "original-pth-converted")
    assert "model=SamModel:original-pth-converted:out=multimask-3;" in generator.preprocess_tag
    assert described["preprocess"]["image_mean"] == [0.485, 0.456, 0.406]
    rows, size = _decoded_rows(generator, PLATE)
    _assert_masks_decode_to(rows, size)
    assert {row["model_sha"] for row in rows} == {original.sha256}


def test_a_pin_whose_file_the_source_no_longer_serves_is_refused(
    original: OriginalSource, mirror: str, tmp_path: Path
) -> None:
    pin = capture_pin(original.instrument, weights_dir=tmp_path)
    wrong = dataclasses.replace(pin, sha="0" * 64)
    with pytest.raises(InstrumentError, match=r"has sha256 [0-9a-f]{64}, but 0{64} is expected .* not kept"):
        MaskGenerator(original.instrument, wrong, GeneratorSettings(**PERMISSIVE), device="cpu", weights_dir=tmp_path)


# --- roster validation of the url source --------------------------------------------------------


_URL_ENTRY = """
[[instrument]]
id = "sam_vit_b"
key = "sam-vit-b-original"
family = "sam"
role = "r"
section = "5.1"
source = "{source}"
{extra}
"""


@pytest.mark.parametrize(
    ("source", "extra", "error"),
    [
        ("url", 'url = "https://example.org/sam.pth"', r"'file_sha256': required exactly when source = \"url\""),
        ("url", f'file_sha256 = "{"a" * 64}"', r"'url': required exactly when source = \"url\""),
        ("url", f'url = "ftp://example.org/sam.pth"\nfile_sha256 = "{"a" * 64}"', r"'url': .* not an http\(s\) URL"),
        ("url", f'url = "https://example.org/x.pth"\nfile_sha256 = "{"A" * 64}"', r"'file_sha256': .* 64-hex lower-case"),
        ("tesseract", 'url = "https://example.org/sam.pth"', r"'url': required exactly when source = \"url\""),
    ],
)
def test_url_source_fields_are_validated(tmp_path: Path, source: str, extra: str, error: str) -> None:
    roster = tmp_path / "roster.toml"
    roster.write_text(_URL_ENTRY.format(source=source, extra=extra))
    with pytest.raises(RegistryError, match=rf"instrument 'sam_vit_b', field {error}"):
        Registry.load(lock_path=tmp_path / "pins.lock.json", roster_path=roster)


def test_weights_dir_default_is_under_the_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from awb_dagster.registry.weight_files import weight_files_dir

    monkeypatch.setenv("AWB_HOME", str(tmp_path))
    assert weight_files_dir() == tmp_path.resolve() / "weights"
    assert weight_files_dir(tmp_path / "other") == (tmp_path / "other").resolve() / "weights"
