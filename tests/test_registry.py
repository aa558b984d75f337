"""Registry: roster completeness against the seed, admission gate, aliases, pin lock."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from awb_dagster.registry import (
    ADMISSION_FIELDS,
    LicenseOptInError,
    LockError,
    NotAdmittedError,
    Pin,
    PinLock,
    Registry,
    RegistryError,
    UnknownModelError,
    render_appendix,
)
from awb_dagster.registry.licenses import license_needs_opt_in, license_parts, restrictive_parts

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_a529bcf95d068e29.txt"
SEED_SECTIONS = {"3", "4", "5", "6", "7", "10"}

EXPECTED_HF_IDS = {
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "google/siglip-so400m-patch14-384",
    "facebook/dinov2-base",
    "facebook/dinov2-large",
    "facebook/dinov2-giant",
    "BAAI/EVA-CLIP-8B",
    "apple/aimv2-large-patch14-336-distilled",
    "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "nielsr/imagebind-huge",
    "facebook/sam-vit-huge",
    "facebook/sam-vit-large",
    "facebook/sam-vit-base",
    "syscv-community/sam-hq-vit-huge",
    "facebook/mask2former-swin-large-ade-semantic",
    "Carve/u2net-universal",
    "facebook/detr-resnet-50",
    "IDEA-Research/grounding-dino-base",
    "shunk031/aesthetics-predictor-v1-vit-large-patch14",
    "shunk031/aesthetics-predictor-v1-vit-base-patch16",
    "camenduru/improved-aesthetic-predictor",
    "PerceptCLIP/PerceptCLIP_Memorability",
    "davanstrien/convnext-tiny-224-wikiart",
    "prithivMLmods/WikiArt-Style",
    "prithivMLmods/WikiArt-Genre",
    "jayanta/microsoft-resnet-50-cartoon-emotion-detection",
    "jayanta/google-vit-base-patch16-224-cartoon-emotion-detection",
    "imamassi/Visual_Emotional_Analysis",
    "PriyamSheta/EmotionClassModel",
    "birder-project/rope_vit_reg4_b14_capi-places365",
    "microsoft/trocr-base-printed",
    "microsoft/trocr-large-printed",
    "Salesforce/blip-image-captioning-base",
    "Salesforce/blip2-opt-2.7b",
    "Salesforce/blip2-flan-t5-xl",
    "microsoft/Florence-2-base",
    "microsoft/Florence-2-large",
    "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen/Qwen2-VL-72B-Instruct",
}
EXPECTED_TORCHVISION = {
    "torchvision/resnet50": 2048,
    "torchvision/vgg16": 512,
    "torchvision/efficientnet_b0": 1280,
    "torchvision/efficientnet_b4": 1792,
    "torchvision/convnext_tiny": 768,
    "torchvision/convnext_small": 768,
}
EXPECTED_DEMO = {  # id -> (family, expected_dim, input_size)
    "awb-demo/tiny-clip": ("clip", 32, 32),
    "awb-demo/tiny-siglip": ("siglip", 48, 32),
    "awb-demo/tiny-dinov2": ("dinov2", 40, 28),
    "awb-demo/tiny-sam": ("sam", None, 64),
    "awb-demo/tiny-sam-hq": ("sam-hq", None, 64),
    "awb-demo/tiny-mask2former": ("mask2former", None, 64),
    "awb-demo/tiny-wikiart-convnext": ("wikiart", 5, 32),
    "awb-demo/tiny-aesthetic-mlp": ("aesthetic", None, None),
    "awb-demo/tiny-detr": ("detr", None, 64),
    "awb-demo/tiny-grounding-dino": ("grounding-dino", None, 64),
    "awb-demo/tiny-blip": ("blip", None, None),
    "awb-demo/tiny-blip2-opt": ("blip2", None, None),
    "awb-demo/tiny-blip2-flan-t5": ("blip2", None, None),
    "awb-demo/tiny-qwen2-vl": ("qwen2-vl", None, None),
    "awb-demo/tiny-florence2": ("florence2", None, None),
    "awb-demo/tiny-u2net": ("u2net", None, None),
    "awb-demo/tiny-open-clip": ("clip", 32, 32),
    "awb-demo/tiny-biomedclip": ("biomedclip", 16, 32),
    "awb-demo/tiny-aimv2": ("aimv2", 32, 32),
    "awb-demo/tiny-places-birder": ("places365", 5, 28),
    "awb-demo/tiny-aesthetic-v1": ("aesthetic-image", None, 32),
}
EXPECTED_URL = {"sam_vit_b", "sam_vit_l", "sam_vit_h"}  # original segment-anything checkpoints


# --- seed parsing ---------------------------------------------------------------------------


def _cell(text: str) -> str | None:
    """A seed table cell without backticks; ``None`` for "(none declared)" / "(n/a)"."""
    text = text.strip().strip("`")
    if text in ("(none declared)", "(n/a)"):
        return None
    return text


def parse_seed_rows(text: str) -> list[dict[str, str | None]]:
    """Every model row of the seed's model tables, keyed by lower-cased column header."""
    rows: list[dict[str, str | None]] = []
    section, header = "", None
    for line in text.splitlines():
        heading = re.match(r"^#{2,3} (\d+(?:\.\d+)?)\)?\s", line)
        if heading:
            section, header = heading.group(1), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "Model ID" in cells:
            header = [c.lower() for c in cells]
        elif header and not set(cells[0]) <= set("-: ") and section.split(".")[0] in SEED_SECTIONS:
            row = dict(zip(header, (_cell(c) for c in cells), strict=True))
            row["section"] = section
            rows.append(row)
    return rows


def seed_model_id(row: dict[str, str | None]) -> str:
    return "tesseract" if row["model id"] == "(Tesseract)" else str(row["model id"])


def seed_license(row: dict[str, str | None]) -> str:
    tag = str(row["license tag"])
    return "varies" if tag == "(varies)" else tag.removeprefix("license:")


def seed_column(row: dict[str, str | None], prefix: str) -> int | None:
    """The integer in the first column whose header starts with ``prefix``, if any."""
    for header, value in row.items():
        if header.startswith(prefix) and value:
            return int(value)
    return None


SEED_ROWS = parse_seed_rows(SEED.read_text(encoding="utf-8")) if SEED.exists() else []


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry.load(lock_path=tmp_path / "pins.lock.json")


def make_pin(registry: Registry, name: str, sha: str = "a" * 40, **overrides: object) -> Pin:
    inst = registry.get(name).instrument
    fields: dict[str, object] = {
        "model_id": inst.id,
        "sha": sha,
        "revision_requested": "main",
        "pipeline_tag": inst.pipeline_tag,
        "library_name": inst.library,
        "license": inst.license or "unknown",
        "gated": False,
        "config": {inst.dim_config_field: inst.expected_dim} if inst.dim_config_field else {},
        "output_dim": inst.expected_dim,
        "input_size": inst.input_size,
        "pinned_at": "2025-01-02T03:04:05+00:00",
        "endpoint": "https://huggingface.co",
        "instrument_key": inst.key,
    }
    fields.update(overrides)
    return Pin(**fields)  # type: ignore[arg-type]


def pinned(tmp_path: Path, *pins: Pin) -> Registry:
    """A registry whose lock (in ``tmp_path``) holds ``pins``."""
    lock = PinLock()
    for pin in pins:
        lock.add(pin)
    lock.save(tmp_path / "pins.lock.json")
    return Registry.load(lock_path=tmp_path / "pins.lock.json")


# --- roster completeness --------------------------------------------------------------------


# Not in the seed: the transformers team's native conversions of seed models whose own repos ship only
# remote code (the seed rows stay, in ideas, and name these in their notes).
NATIVE_CONVERSIONS = {"florence-community/Florence-2-base": "microsoft/Florence-2-base",
                      "florence-community/Florence-2-large": "microsoft/Florence-2-large"}  # fmt: skip


def test_roster_holds_exactly_the_41_hf_ids(registry: Registry) -> None:
    hf_ids = [e.instrument.id for e in registry.entries if e.instrument.source == "hf"]
    assert len(EXPECTED_HF_IDS) == 41
    assert sorted(hf_ids) == sorted([*EXPECTED_HF_IDS, *NATIVE_CONVERSIONS])
    for native, seed_id in NATIVE_CONVERSIONS.items():
        assert native in registry.get(seed_id).instrument.notes


def test_roster_holds_tesseract_convnets_and_demo(registry: Registry) -> None:
    by_source = {
        source: {e.instrument.id for e in registry.entries if e.instrument.source == source}
        for source in ("tesseract", "torchvision", "demo", "url")
    }
    assert by_source == {
        "tesseract": {"tesseract"},
        "torchvision": set(EXPECTED_TORCHVISION) | {"awb-demo/tiny-convnext"},  # + the demo's tiny file
        "demo": set(EXPECTED_DEMO),
        "url": EXPECTED_URL,
    }
    assert len(registry.entries) == 41 + len(NATIVE_CONVERSIONS) + 1 + 6 + 1 + len(EXPECTED_DEMO) + len(EXPECTED_URL)


@pytest.mark.skipif(not SEED.exists(), reason=f"seed not found at {SEED}")
def test_roster_covers_every_seed_row(registry: Registry) -> None:
    seed_ids = {seed_model_id(row) for row in SEED_ROWS}
    assert seed_ids == EXPECTED_HF_IDS | {"tesseract"}
    sources = ("hf", "tesseract")
    roster_ids = {e.instrument.id for e in registry.entries if e.instrument.source in sources}
    assert roster_ids == seed_ids | set(NATIVE_CONVERSIONS)


@pytest.mark.parametrize("row", SEED_ROWS, ids=seed_model_id)
def test_entry_matches_its_seed_row(registry: Registry, row: dict[str, str | None]) -> None:
    inst = registry.get(seed_model_id(row)).instrument
    assert inst.license == seed_license(row)
    assert inst.pipeline_tag == row["pipeline"]
    assert inst.role == row["role"]
    assert inst.section == row["section"]
    assert inst.notes.startswith(str(row["notes"]))
    if (dim := seed_column(row, "expected dim")) is not None:
        assert inst.expected_dim == dim
    if (size := seed_column(row, "canonical i")) is not None:
        assert inst.input_size == size


def test_hf_ids_are_unique_case_insensitively(registry: Registry) -> None:
    ids = [e.instrument.id.lower() for e in registry.entries]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("entry", Registry.load().entries, ids=lambda e: e.instrument.key)
def test_entry_is_declared_honestly(entry) -> None:
    inst = entry.instrument
    assert inst.failure_modes, "every instrument needs at least one failure mode"
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", inst.key)
    assert inst.output_kind and inst.output_dtype
    assert inst.license, "license must be recorded, `unknown` where undeclared"
    runnable = ("clip", "siglip", "dinov2", "biomedclip", "sam", "sam-hq", "mask2former", "convnet", "wikiart", "tesseract", "trocr", "detr", "grounding-dino", "blip", "blip2", "qwen2-vl", "u2net", "places365", "aesthetic-image")
    # Emotion probes run where the transformers image-classification layout is declared (the others stay in ideas).
    # The aesthetic MLP adapter runs the demo MLP and the MD5-audited mirror (the image-fed predictors are aesthetic-image).
    assert inst.sealed_runs == (
        inst.family in runnable
        or (inst.family == "emotion" and inst.library == "transformers")
        or (inst.family == "aesthetic" and (inst.demo or inst.key == "improved-aesthetic-predictor"))
        or (inst.family == "aimv2" and inst.demo)  # the real AIMv2 repo's native layout is unverified
        or (inst.family == "florence2" and not inst.trust_remote_code)  # microsoft's remote-code repos stay in ideas
    )
    if inst.output_kind == "vector":
        assert inst.expected_dim


@pytest.mark.parametrize(("model_id", "dim"), EXPECTED_TORCHVISION.items())
def test_torchvision_weight_ids_are_real(registry: Registry, model_id: str, dim: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    inst = registry.get(model_id).instrument
    weights = torchvision.models.get_weight(inst.weight_id)
    assert weights.transforms().crop_size == [inst.input_size]
    assert inst.expected_dim == dim
    assert inst.library == "torchvision" and inst.library_version


@pytest.mark.parametrize(("model_id", "expected"), EXPECTED_DEMO.items())
def test_demo_instruments(registry: Registry, model_id: str, expected: tuple) -> None:
    inst = registry.get(model_id).instrument
    assert (inst.family, inst.expected_dim, inst.input_size) == expected
    # The tiny Mask2Former carries the real model's `other` license, so the demo exercises the opt-in.
    assert inst.demo and inst.source == "demo" and inst.license == ("other" if inst.family == "mask2former" else "apache-2.0")
    assert inst.failure_modes == ("random weights: outputs carry no meaning",)


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("facebook/dino-v2-base", "facebook/dinov2-base"),
        ("facebook/dino-v2-large", "facebook/dinov2-large"),
        ("facebook/sam-vit-h", "facebook/sam-vit-huge"),
        ("facebook/sam-vit-l", "facebook/sam-vit-large"),
        ("facebook/sam-vit-b", "facebook/sam-vit-base"),
        ("facebook/mask2former-swin-large-ade", "facebook/mask2former-swin-large-ade-semantic"),
        ("apple/aimv2-large-patch14", "apple/aimv2-large-patch14-336-distilled"),
        ("FACEBOOK/SAM-VIT-H", "facebook/sam-vit-huge"),
        ("sam-vit-huge", "facebook/sam-vit-huge"),
        ("Laion-CLIP-ViT-H-14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ],
)
def test_names_resolve(registry: Registry, alias: str, canonical: str) -> None:
    assert registry.get(alias).instrument.id == canonical


@pytest.mark.parametrize(
    ("alias", "advice"),
    [
        ("llava-hf/llava-1.6-13b-hf", "llava-hf/llava-v1.6-vicuna-13b-hf"),
        ("llava-hf/llava-1.6-34b-hf", "currently available LLaVA checkpoint"),
        ("IDEA-Research/detrex-mask2former", "use facebook/mask2former-swin-large-ade-semantic"),
    ],
)
def test_dead_aliases_raise_with_advice(registry: Registry, alias: str, advice: str) -> None:
    with pytest.raises(UnknownModelError, match=re.escape(advice)):
        registry.get(alias)


def test_unknown_name_suggests_close_matches(registry: Registry) -> None:
    with pytest.raises(UnknownModelError, match="did you mean 'facebook/dinov2-large'"):
        registry.get("facebook/dinov2-larg")
    with pytest.raises(LookupError, match="no such model 'nothing-like-it'"):
        registry.get("nothing-like-it")


def test_family_lists_entries_in_roster_order(registry: Registry) -> None:
    assert [e.instrument.key for e in registry.family("dinov2")] == [
        "dinov2-base", "dinov2-large", "dinov2-giant", "demo-tiny-dinov2",
    ]  # fmt: skip
    with pytest.raises(UnknownModelError, match="no such family"):
        registry.family("dino")


# --- admission gate -------------------------------------------------------------------------


def test_without_pins_everything_is_ideas(registry: Registry) -> None:
    for entry in registry.entries:
        assert entry.status == "ideas"
        assert entry.missing[0] == "pin"
        assert set(entry.missing) <= set(ADMISSION_FIELDS)


def test_pinned_clip_is_admitted(tmp_path: Path, registry: Registry) -> None:
    pinned_registry = pinned(tmp_path, make_pin(registry, "laion-clip-vit-h-14"))
    entry = pinned_registry.get("laion-clip-vit-h-14")
    assert entry.status == "admitted" and entry.missing == ()
    assert pinned_registry.require_admitted("laion-clip-vit-h-14") is entry


def test_not_admitted_error_names_every_missing_field(registry: Registry) -> None:
    with pytest.raises(NotAdmittedError, match=re.escape("run `awb pin facebook/dinov2-large`")):
        registry.require_admitted("facebook/dino-v2-large")


def test_sealed_runs_false_keeps_a_pinned_entry_in_ideas(
    tmp_path: Path, registry: Registry
) -> None:
    pinned_registry = pinned(tmp_path, make_pin(registry, "perceptclip-memorability"))
    entry = pinned_registry.get("perceptclip-memorability")
    assert entry.status == "ideas" and entry.missing[-1] == "sealed_runs"
    with pytest.raises(NotAdmittedError, match="sealed_runs: no .* adapter runs family 'memorability'"):
        pinned_registry.require_admitted("perceptclip-memorability")
    # Florence-2's remote-code repo stays in ideas though the native florence2 rows run
    pinned_registry = pinned(tmp_path, make_pin(registry, "florence-2-base-remote-code"))
    assert pinned_registry.get("microsoft/Florence-2-base").missing == ("sealed_runs",)
    assert pinned_registry.get("florence-community/Florence-2-base").instrument.sealed_runs
    with pytest.raises(NotAdmittedError, match=r"sealed_runs: this repo's layout loads only through its own Python"):
        pinned_registry.require_admitted("florence-2-base-remote-code")


def test_undeclared_preprocessing_stays_in_ideas(registry: Registry) -> None:
    assert "preprocessing" in registry.get("nielsr/imagebind-huge").missing


@pytest.mark.parametrize(
    ("license", "flagged"),
    [("other", True), ("apple-amlr", True), ("unknown", True), ("varies", True),
     ("cc-by-nc-sa-4.0", True), ("cc-by-nc-4.0", True), ("mit", False), ("apache-2.0", False),
     # An allow-list: whatever is not known-permissive needs the opt-in, normalized first.
     ("cc-by-nd-4.0", True), ("openrail", True), ("llama2", True), ("apache-2.0,cc-by-nc-4.0", True),
     (" cc-by-nc-4.0", True), ("CC-BY-NC-4.0 ", True), (" Apache-2.0 ", False), ("MIT", False),
     ("license:mit", False), ("mit, bsd-3-clause", False), ("", True), (" , ", True)],
)  # fmt: skip
def test_license_flags(registry: Registry, license: str, flagged: bool) -> None:
    inst = dataclasses.replace(registry.get("dinov2-base").instrument, license=license)
    assert inst.license_flagged is flagged


@pytest.mark.parametrize(
    ("declared", "parts", "restrictive"),
    [
        (["apache-2.0", "cc-by-nc-4.0"], ("apache-2.0", "cc-by-nc-4.0"), ("cc-by-nc-4.0",)),
        ("apache-2.0,cc-by-nc-4.0", ("apache-2.0", "cc-by-nc-4.0"), ("cc-by-nc-4.0",)),
        (" Apache-2.0 ,  MIT", ("apache-2.0", "mit"), ()),
        (["mit", " MIT "], ("mit",), ()),
        ("cc-by-nd-4.0", ("cc-by-nd-4.0",), ("cc-by-nd-4.0",)),
        (None, ("unknown",), ("unknown",)),
        ([], ("unknown",), ("unknown",)),
    ],
)
def test_license_parts_are_normalized_and_checked_one_by_one(declared, parts, restrictive) -> None:
    assert license_parts(declared) == parts
    assert restrictive_parts(declared) == restrictive
    assert license_needs_opt_in(declared) is bool(restrictive)


@pytest.mark.parametrize(
    "captured", ["apache-2.0,cc-by-nc-4.0", "cc-by-nd-4.0", " cc-by-nc-4.0", "Apache-2.0, Other"]
)
def test_a_pinned_license_with_any_restrictive_part_needs_the_opt_in(
    tmp_path: Path, registry: Registry, captured: str
) -> None:
    """dinov2-base is declared apache-2.0; the license its pin captured decides too, part by part."""
    pinned_registry = pinned(tmp_path, make_pin(registry, "dinov2-base", license=captured))
    (restrictive,) = restrictive_parts(captured)
    with pytest.raises(LicenseOptInError, match=re.escape(f"license {restrictive!r}")):
        pinned_registry.require_admitted("dinov2-base")
    with pytest.raises(LicenseOptInError):
        pinned_registry.require_admitted("dinov2-base", license_opt_in=["apache-2.0"])
    assert pinned_registry.require_admitted("dinov2-base", license_opt_in=[f" {restrictive.upper()} "])
    assert pinned_registry.require_admitted("dinov2-base", license_opt_in=["dinov2-base"])


@pytest.mark.parametrize(
    ("opt_in", "allowed"),
    [
        ((), False),
        (("other",), False),
        (("clip-vit-large-patch14",), True),
        (("openai/CLIP-vit-large-patch14",), True),
        (("unknown",), True),
    ],
)
def test_license_opt_in(tmp_path: Path, registry: Registry, opt_in: tuple, allowed: bool) -> None:
    pinned_registry = pinned(tmp_path, make_pin(registry, "clip-vit-large-patch14"))
    if allowed:
        assert pinned_registry.require_admitted("clip-vit-large-patch14", license_opt_in=opt_in)
    else:
        expected = re.escape('license_opt_in: ["clip-vit-large-patch14"]')
        with pytest.raises(LicenseOptInError, match=expected):
            pinned_registry.require_admitted("clip-vit-large-patch14", license_opt_in=opt_in)


def test_pinned_license_is_checked_too(tmp_path: Path, registry: Registry) -> None:
    pinned_registry = pinned(tmp_path, make_pin(registry, "laion-clip-vit-h-14", license="other"))
    with pytest.raises(LicenseOptInError, match="license 'other'"):
        pinned_registry.require_admitted("laion-clip-vit-h-14")
    assert pinned_registry.require_admitted("laion-clip-vit-h-14", license_opt_in=["other"])


def test_gated_pin_needs_the_entry_opt_in(tmp_path: Path, registry: Registry) -> None:
    pinned_registry = pinned(tmp_path, make_pin(registry, "dinov2-base", gated=True))
    with pytest.raises(LicenseOptInError, match="gated on the hub"):
        pinned_registry.require_admitted("dinov2-base", license_opt_in=["apache-2.0"])
    assert pinned_registry.require_admitted("dinov2-base", license_opt_in=["dinov2-base"])


# --- roster validation ----------------------------------------------------------------------

GOOD_ENTRY = """
[[instrument]]
id = "org/model-a"
key = "model-a"
family = "clip"
role = "r"
section = "3.1"
source = "hf"
failure_modes = ["x"]
"""


@pytest.mark.parametrize(
    ("broken", "entry", "field"),
    [
        (GOOD_ENTRY.replace('key = "model-a"\n', ""), "'org/model-a'", "key"),
        (GOOD_ENTRY.replace('id = "org/model-a"\n', ""), "#1", "id"),
        (GOOD_ENTRY.replace('"model-a"', '"Model A"'), "'org/model-a'", "key"),
        (GOOD_ENTRY.replace('"model-a"', '"model|a"'), "'org/model-a'", "key"),
        (GOOD_ENTRY.replace("org/model-a", "org/model-b"), "'org/model-b'", "key"),
        (GOOD_ENTRY.replace('key = "model-a"', 'key = "model-b"'), "'org/model-a'", "id"),
        (GOOD_ENTRY + 'expected_dim = "768"\n', "'org/model-a'", "expected_dim"),
        (GOOD_ENTRY + "sealed_runs = 1\n", "'org/model-a'", "sealed_runs"),
        (GOOD_ENTRY + 'failure_mode = ["x"]\n', "'org/model-a'", "failure_mode"),
        (GOOD_ENTRY.replace('"clip"', '"clipp"'), "'org/model-a'", "family"),
        (GOOD_ENTRY + 'license = "license:mit"\n', "'org/model-a'", "license"),
        (GOOD_ENTRY.replace('"hf"', '"torchvision"'), "'org/model-a'", "weight_id"),
        (GOOD_ENTRY + 'dim_config_field = "projection_dim"\n', "'org/model-a'", "dim_config_field"),
        (
            GOOD_ENTRY.replace("org/model-a", "org/model-b").replace('"model-a"', '"model-b"')
            + 'aliases = ["ORG/MODEL-A"]\n',
            "'org/model-b'",
            "aliases",
        ),
    ],
)
def test_broken_roster_fails_naming_entry_and_field(
    tmp_path: Path, broken: str, entry: str, field: str
) -> None:
    roster = tmp_path / "roster.toml"
    roster.write_text(GOOD_ENTRY + broken, encoding="utf-8")
    with pytest.raises(RegistryError) as excinfo:
        Registry.load(lock_path=tmp_path / "lock.json", roster_path=roster)
    message = str(excinfo.value)
    assert str(roster) in message
    assert f"instrument {entry}" in message
    assert f"field '{field}'" in message


def test_minimal_roster_loads(tmp_path: Path) -> None:
    roster = tmp_path / "roster.toml"
    roster.write_text(GOOD_ENTRY, encoding="utf-8")
    registry = Registry.load(lock_path=tmp_path / "lock.json", roster_path=roster)
    missing = registry.get("model-a").missing
    assert missing == ("pin", "license", "outputs", "preprocessing", "sealed_runs")


def test_lock_with_pins_for_undeclared_model_fails(tmp_path: Path, registry: Registry) -> None:
    lock = PinLock()
    lock.add(dataclasses.replace(make_pin(registry, "dinov2-base"), model_id="org/gone"))
    lock.save(tmp_path / "pins.lock.json")
    with pytest.raises(RegistryError, match="'org/gone', which the roster does not declare"):
        Registry.load(lock_path=tmp_path / "pins.lock.json")


def test_lock_dim_contradicting_roster_fails(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(RegistryError, match="output_dim 1024 but the roster declares expected_dim"):
        pinned(tmp_path, make_pin(registry, "dinov2-base", output_dim=1024))


# --- pin lock -------------------------------------------------------------------------------


def test_pin_key_and_validation(registry: Registry) -> None:
    pin = make_pin(registry, "dinov2-large", sha="0123456789abcdef" * 2 + "01234567")
    assert pin.key == "dinov2-large@0123456789"
    make_pin(registry, "resnet50", sha="f" * 64)  # sha256 of a weight file is accepted
    for bad in (
        {"sha": "main"},
        {"sha": "A" * 40},
        {"pinned_at": "yesterday"},
        {"pinned_at": "2025-01-02T03:04:05"},
        {"gated": "no"},
        {"output_dim": "1024"},
        {"license": ""},
    ):
        with pytest.raises(ValueError):
            make_pin(registry, "dinov2-large", **bad)


def test_lock_round_trip_is_stable(tmp_path: Path, registry: Registry) -> None:
    lock = PinLock()
    lock.add(make_pin(registry, "dinov2-large", config={"hidden_size": 1024, "image_size": 518}))
    lock.add(make_pin(registry, "clip-vit-large-patch14", sha="b" * 40))
    path = tmp_path / "nested" / "pins.lock.json"
    lock.save(path)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text)["version"] == 1
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    loaded = PinLock.load(path)
    assert loaded.all_pins() == lock.all_pins()
    loaded.save(path)
    assert path.read_text(encoding="utf-8") == text


def test_missing_lock_is_empty(tmp_path: Path) -> None:
    assert PinLock.load(tmp_path / "absent.json").all_pins() == ()


def test_repin_keeps_history(tmp_path: Path, registry: Registry) -> None:
    first = make_pin(registry, "dinov2-large")
    second = make_pin(registry, "dinov2-large", sha="c" * 40)
    lock = PinLock()
    assert lock.add(first) is True
    assert lock.add(first) is False  # same sha already active: no-op
    assert lock.add(second) is True
    assert lock.pins_for("facebook/dinov2-large") == (first, second)
    assert lock.active("facebook/dinov2-large") == second
    assert lock.find_key(first.key) == first

    lock.retire("facebook/dinov2-large", second.sha)
    assert len(lock.pins_for("facebook/dinov2-large")) == 2
    assert lock.active("facebook/dinov2-large") == first
    lock.save(tmp_path / "pins.lock.json")
    entry = Registry.load(lock_path=tmp_path / "pins.lock.json").get("dinov2-large")
    assert [p.sha for p in entry.pins] == [first.sha, second.sha]
    assert entry.pins[1].retired and entry.active_pin == first
    with pytest.raises(LockError, match="no pin"):
        lock.retire("facebook/dinov2-large", "d" * 40)


def test_save_is_atomic(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pins.lock.json"
    lock = PinLock()
    lock.add(make_pin(registry, "dinov2-base"))
    lock.save(path)
    before = path.read_bytes()
    lock.add(make_pin(registry, "dinov2-base", sha="e" * 40))

    def crash(src: str, dst: str) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        lock.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pins.lock.json"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "cannot read pin lock"),
        ('{"version": 2, "pins": {}}', "not a version 1 pin lock"),
        ('{"version": 1, "pins": {"a/b": [{"model_id": "a/b"}]}}', "missing field"),
        ('{"version": 1, "pins": []}', "'pins' must be an object"),
    ],
)
def test_corrupt_lock_names_path_and_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "pins.lock.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LockError, match=re.escape(problem)) as excinfo:
        PinLock.load(path)
    assert str(path) in str(excinfo.value)
    with pytest.raises(RegistryError, match=re.escape(str(path))):
        Registry.load(lock_path=path)


# --- appendix -------------------------------------------------------------------------------


def test_appendix_has_every_card_pin_and_status(tmp_path: Path, registry: Registry) -> None:
    old = make_pin(registry, "dinov2-large")
    pinned_registry = pinned(tmp_path, old, make_pin(registry, "dinov2-large", sha="c" * 40))
    text = render_appendix(pinned_registry)
    for entry in pinned_registry.entries:
        assert f"### `{entry.instrument.id}`" in text
    assert f"`{old.sha}`" in text and f"`{'c' * 40}`" in text
    summary_row = "| `dinov2-large` | `facebook/dinov2-large` | dinov2 | DINOv2 large | apache-2.0 |"
    assert f"{summary_row} admitted |" in text
    assert "other (opt-in required)" in text
    assert "`IDEA-Research/detrex-mask2former`" in text
    assert "- **failure_modes**:\n  - " in text
