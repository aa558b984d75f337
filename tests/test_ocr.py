"""Text from plates: the label parser (pure), the Tesseract pin, real OCR on the shared Audubon
plates (skipped without them or without tesseract), and the ocr_text asset end to end."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from demo_homes import make_demo_home
from PIL import Image, ImageDraw

from awb_dagster.assets.factory import job_name
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.local_contrast import is_faint, local_normalize, normalized_crop
from awb_dagster.instruments.plate_label import int_to_roman, parse_label, parse_numeral, roman_to_int
from awb_dagster.instruments.roman_glyphs import read_numeral, stroke_tail
from awb_dagster.instruments.tesseract import CAPTION_ZONE, HEADER_ZONE, OcrWord, TesseractReader, ZoneSettings, parse_tsv
from awb_dagster.producers.ocr import OCR_ASSET
from awb_dagster.provenance.text_records import TEXT_CHECK_DESCRIPTIONS, check_text_pairs, label_of, text_schema, text_table
from awb_dagster.registry.model import Registry
from awb_dagster.registry.prompts import PromptRegistry
from awb_dagster.registry.tesseract_install import TesseractInstall, capture_tesseract_pin
from awb_dagster.runner import materialize_pin_ranges

SHARED_PLATES = Path(__file__).resolve().parents[2] / "shared" / "plates"
HAVE_TESSERACT = shutil.which("tesseract") is not None
needs_tesseract = pytest.mark.skipif(not HAVE_TESSERACT, reason="tesseract is not installed (apt-get install tesseract-ocr)")
needs_plates = pytest.mark.skipif(not SHARED_PLATES.is_dir(), reason=f"no shared plates at {SHARED_PLATES}")
PARROT = "audubon_p026_carolina-parrot.jpg"
OWL = "audubon_p061_great-horned-owl.jpg"


def word(
    text: str, x: int, y: int, zone: str = HEADER_ZONE, conf: float = 0.9, index: int = 0, h: int = 20, scale: int = 2
) -> OcrWord:
    return OcrWord(text, conf, (x, y, 10 * len(text), h), f"{zone}@{scale}:1.1.{index}", zone, index, f"{zone}@{scale}")


@pytest.mark.parametrize(
    ("numeral", "value"),
    [("I", 1), ("XI", 11), ("LXI", 61), ("LXXXI", 81), ("CLXXIV", 174), ("CCLXXV", 275), ("CCCCXXI", 421),
     ("CDXXI", 421), ("IIII", None), ("VX", None), ("IC", None), ("", None), ("PLATE", None)],
)  # fmt: skip
def test_roman_numerals(numeral, value):
    assert roman_to_int(numeral) == value


@pytest.mark.parametrize("value", [1, 4, 9, 14, 40, 61, 99, 174, 275, 400, 421, 435])
def test_roman_round_trip(value):
    assert roman_to_int(int_to_roman(value)) == value == roman_to_int(int_to_roman(value, additive=True))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("26.", (26, False)), ("LXI,", (61, False)), ("CCCCXX1", (421, True)), ("XlI", (12, True)), ("L.X.", None), ("QQ", None)],
)  # fmt: skip
def test_noisy_numerals(text, parsed):
    assert parse_numeral(text) == parsed


def test_plate_number_from_a_split_header_and_its_words():
    words = [word("N°", 100, 50, index=0), word("13.", 130, 50, index=1), word("PLAT", 1500, 52, index=2),
             word("E,", 1550, 52, index=3), word("LXI.", 1600, 53, index=4)]  # fmt: skip
    label = parse_label(words, 2000)
    assert label.plate_number.value == 61
    assert label.plate_number.word_indices == (2, 3, 4)
    assert label.plate_number.confidence == pytest.approx(0.9)


def test_reads_vote_and_the_fascicle_decides():
    # three reads of "No. 13.  PLATE LXI.": two read the period as a 1 (LXII, a repair), one reads LXI
    reads = [(2, "LXI."), (3, "LXI1."), (4, "LXI1.")]
    words = [w for i, (scale, numeral) in enumerate(reads) for w in (
        word("No", 100, 40, index=3 * i, scale=scale), word("13.", 140, 40, index=3 * i + 1, scale=scale),
        word("PLATE", 1500, 52, index=3 * i + 2, scale=scale), word(numeral, 1600, 52, index=100 + i, scale=scale),
    )]  # fmt: skip
    label = parse_label(words, 2000)
    assert label.plate_number.value == 61  # both in fascicle 13 (61-65): the unrepaired read wins
    assert label.plate_number.confidence == pytest.approx(0.9 / 3)  # one read of three agrees
    # a read contradicting the fascicle loses even with more votes
    contradicting = [w for i in range(3) for w in (
        word("No", 100, 40, index=3 * i, scale=i), word("3.", 140, 40, index=3 * i + 1, scale=i),
        word("PLATE", 1500, 52, index=3 * i + 2, scale=i), word("18." if i else "13.", 1600, 52, index=100 + i, scale=i),
    )]  # fmt: skip
    assert parse_label(contradicting, 2000).plate_number.value == 13


def test_repaired_numeral_has_lower_confidence():
    label = parse_label([word("PLATE", 1500, 50, index=0), word("CCCCXX1", 1600, 50, index=1)], 2000)
    assert label.plate_number.value == 421 and label.plate_number.confidence == pytest.approx(0.45)


def test_glyph_read_counts_serif_joined_is_when_tesseract_corroborates_the_other_letters():
    # Tesseract reads "PLATE. CIII." as C1 (101, repaired); the glyph read CIII shares its C
    tesseract = [word("PLATE.", 1500, 50, index=0), word("C1.", 1600, 50, index=1)]
    glyphs = [replace(w, pass_id="header@glyphs2") for w in (word("PLATE", 1500, 50, index=2), word("CIII", 1600, 50, index=3))]
    label = parse_label(tesseract + glyphs, 2000)
    assert label.plate_number.value == 103 and label.plate_number.word_indices == (2, 3)
    # a truncated glyph read (CCC) that Tesseract's letters (CCCCXX) do not corroborate is dropped
    tesseract = [word("PLATE", 1500, 50, index=0), word("CCCCXX1.", 1600, 50, index=1)]
    glyphs = [replace(w, pass_id="header@glyphs2") for w in (word("PLATE", 1500, 50, index=2), word("CCC", 1600, 50, index=3))]
    assert parse_label(tesseract + glyphs, 2000).plate_number.value == 421
    # an Arabic read corroborates no glyph read: "PLATE 13." stays 13 against a glyph read "I"
    tesseract = [word("PLATE", 1500, 50, index=0), word("13.", 1600, 50, index=1)]
    glyphs = [replace(w, pass_id="header@glyphs2") for w in (word("PLATE", 1500, 50, index=2), word("I", 1600, 50, index=3))]
    assert parse_label(tesseract + glyphs, 2000).plate_number.value == 13
    # a lone PLATE (no numeral read by Tesseract) corroborates no all-I glyph read (label-parse-6)
    glyphs = [replace(w, pass_id="header@glyphs2") for w in (word("PLATE", 1500, 50, index=2), word("III", 1600, 50, index=3))]
    assert parse_label([word("PLATE", 1500, 50, index=0), *glyphs], 2000).plate_number is None
    assert parse_label([word("PLATE", 1500, 50, index=0), word("III.", 1600, 50, index=1), *glyphs], 2000).plate_number.value == 3


def _engraved(letters: str, cap: int = 40) -> np.ndarray:
    """A numeral drawn like the plates' engraving: I = thick stem with hairline serifs wide
    enough to touch the next I's; C = thick left bowl with hairline arms, open on the right;
    X and V = a thick and a hairline diagonal, with hairline serifs joining the neighbours."""
    image = Image.new("L", (60 * len(letters) + 80, 2 * cap), 250)
    draw = ImageDraw.Draw(image)
    x, top, bottom = 20, cap // 2, cap // 2 + cap
    for ch in letters:
        if ch == "I":
            draw.rectangle((x + 6, top, x + 13, bottom), fill=30)
            draw.rectangle((x, top, x + 20, top + 2), fill=120)
            draw.rectangle((x, bottom - 2, x + 20, bottom), fill=120)
            x += 20
        elif ch in "XV":
            w, foot = round(0.7 * cap), round(0.35 * cap) if ch == "V" else round(0.7 * cap)
            draw.line((x, top, x + foot, bottom), fill=30, width=7)
            draw.line((x + w, top, x + w - foot, bottom), fill=150, width=2)
            draw.rectangle((x - 2, top, x + w + 2, top + 2), fill=120)
            draw.rectangle((x - 2, bottom - 2, x + w + 2, bottom), fill=120)
            x += w + 2
        else:
            x += 6
            draw.arc((x, top, x + cap, bottom), 110, 250, fill=30, width=8)
            draw.arc((x, top, x + cap, bottom), 250, 330, fill=150, width=2)
            draw.arc((x, top, x + cap, bottom), 30, 110, fill=150, width=2)
            x += cap + 8
    return np.asarray(image)


@pytest.mark.parametrize("numeral", ["CIII", "CCCIII", "I", "CC"])
def test_glyph_reader_counts_serif_joined_stems(numeral):
    assert read_numeral(_engraved(numeral), 40) == numeral


@pytest.mark.parametrize(("numeral", "tail"), [("XXVIII", 3), ("XXXI", 1), ("XV", 0), ("III", None), ("I", None)])
def test_stroke_tail_counts_the_is_after_serif_joined_x_and_v(numeral, tail):
    assert stroke_tail(_engraved(numeral), 40) == tail


def test_completed_read_adds_the_stroke_tail_to_tesseracts_letters():
    # Tesseract reads "PLATE,LXXXVIII." as LXXXVII (87) and LXXXVIIL; the strokes count three I's after the V
    tesseract = [word("PLATE,", 1500, 50, index=0), word("LXXXVII.", 1600, 50, index=1),
                 replace(word("PLATELXXXVIIL.", 1500, 50, index=2), pass_id="header@line3")]  # fmt: skip
    tail = replace(word("III", 1600, 50, index=3), pass_id="header@tail3")
    label = parse_label([*tesseract, tail], 2000)
    assert label.plate_number.value == 88 and label.plate_number.word_indices == (3,)
    assert parse_label(tesseract, 2000).plate_number.value == 87
    # a valid read ending in C is not completed (its C's upright stroke is in the count): CXC stays 190
    assert parse_label([word("PLATE", 1500, 50, index=0), word("CXC.", 1600, 50, index=1), tail], 2000).plate_number.value == 190
    # no reading above the edition's 435 plates
    assert parse_label([word("PLATE", 1500, 50, index=0), word("DCCC", 1600, 50, index=1)], 2000).plate_number is None


def test_glyph_reader_refuses_blank_and_unknown_shapes():
    assert read_numeral(np.full((80, 200), 250, dtype=np.uint8), 40) is None  # no ink
    blob = np.full((80, 200), 250, dtype=np.uint8)
    blob[20:60, 20:60] = 30  # a filled square is no Roman letter
    assert read_numeral(blob, 40) is None


def test_local_normalization_darkens_faint_ink_and_whitens_paper():
    band = np.full((60, 300), 252, dtype=np.uint8)
    band[20:40, 50:53] = 175  # a faint brown stroke on paper
    band[10:50, 200:280] = 40  # a dark picture part
    grey = Image.fromarray(band)
    out = np.asarray(local_normalize(grey))
    assert out[30, 51] < 40 and out[30, 120] == 255 and out[5, 10] == 255  # stroke black, blank paper white
    assert is_faint(grey.crop((40, 10, 70, 50))) and not is_faint(grey.crop((190, 0, 290, 60)))
    assert np.asarray(normalized_crop(grey, (40, 10, 70, 50)))[20, 11] < 40
    with pytest.raises(ValueError, match="mode L"):
        local_normalize(grey.convert("RGB"))


def test_latin_binomial_and_common_name_from_a_noisy_caption():
    c = CAPTION_ZONE
    words = [
        word("Drawn", 100, 2300, c, index=0), word("F.R.S.E.", 200, 2300, c, index=1),  # the artist's line: left edge
        word("Carolina", 800, 2250, c, 0.4, 2, h=40), word("Zarrot.", 900, 2250, c, 0.3, 3, h=40),
        word("PSITACUS", 850, 2310, c, 0.92, 4), word("CAROLINENSIS,", 960, 2310, c, 0.88, 5),
        word("Plant", 850, 2360, c, 0.7, 6), word("Vilgo.", 920, 2360, c, 0.6, 7),
    ]  # fmt: skip
    label = parse_label(words, 2000)
    assert label.latin_name.value == "Psitacus carolinensis"
    assert label.latin_name.word_indices == (4, 5) and label.latin_name.confidence == pytest.approx(0.9)
    assert label.common_name.value == "Carolina Zarrot" and label.common_name.word_indices == (2, 3)
    assert label.plate_number is None
    # capitals Tesseract is all but unsure of (script read as "BANE LEEPER", 0.0) are no binomial word
    junk = [word("BANE", 850, 2200, c, 0.46, 8), word("LEEPER", 960, 2200, c, 0.0, 9)]
    assert parse_label([*junk, *words[4:6]], 2000).latin_name.value == "Psitacus carolinensis"
    assert parse_label(junk, 2000).latin_name.value == "Bane"
    assert parse_label([junk[0], replace(junk[1], confidence=0.3)], 2000).latin_name.value == "Bane leeper"


def test_tsv_boxes_map_back_to_plate_pixels():
    tsv = (
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
        "1\t1\t0\t0\t0\t0\t0\t0\t4000\t600\t-1\t\n"
        "5\t1\t2\t1\t1\t1\t300\t90\t120\t40\t91.5\tPLATE\n"
        "5\t1\t2\t1\t1\t2\t450\t90\t30\t40\t-1\t \n"
    )
    (only,) = parse_tsv(tsv, CAPTION_ZONE, (0, 2000), 2.0, first_index=7)
    assert only == OcrWord("PLATE", 0.915, (150, 2045, 60, 20), "caption@2:2.1.1", CAPTION_ZONE, 7, "caption@2")


def test_zone_settings_are_validated():
    with pytest.raises(ValueError, match="caption_fraction"):
        ZoneSettings(caption_fraction=0.9)
    with pytest.raises(ValueError, match="header_scales"):
        ZoneSettings(header_scales=(10.0,))
    with pytest.raises(ValueError, match="caption_scales"):
        ZoneSettings(caption_scales=(2.0, 2.0))
    with pytest.raises(ValueError, match="header_norm_scales"):
        ZoneSettings(header_norm_scales=(0.5,))


def test_another_engine_version_is_another_pin():
    install = TesseractInstall("/usr/bin/tesseract", "5.3.0", "/t", {"eng": "a" * 64})
    assert replace(install, version="5.3.1").sha256 != install.sha256
    assert replace(install, languages={"eng": "b" * 64}).sha256 != install.sha256
    assert replace(install, binary="/opt/tesseract").sha256 == install.sha256  # a move is the same engine


# --- the installed engine on real plates ----------------------------------------------------------


@pytest.fixture(scope="module")
def reader() -> TesseractReader:
    if not HAVE_TESSERACT:
        pytest.skip("tesseract is not installed (apt-get install tesseract-ocr)")
    instrument = Registry.load().get("tesseract").instrument
    return TesseractReader(instrument, capture_tesseract_pin(instrument))


@needs_tesseract
def test_pin_records_version_and_traineddata(reader):
    pin = reader.pin
    assert pin.config["version"] == reader.install.version and len(pin.config["traineddata.eng"]) == 64
    assert pin.key.startswith("tesseract@") and f"tesseract{reader.install.version}" in reader.preprocess_tag
    with pytest.raises(InstrumentError, match="is not pin"):
        TesseractReader(reader.instrument, replace(pin, sha="0" * 64))


@needs_tesseract
@needs_plates
@pytest.mark.parametrize(
    ("file", "words", "number", "latin"),
    [(PARROT, {"PSITACUS", "CAROLINENSIS"}, 26, "Psitacus carolinensis"), (OWL, {"STRIX", "PLATE"}, 61, "Strix")],
)  # fmt: skip
def test_real_ocr_reads_the_engraved_caption(reader, file, words, number, latin):
    with Image.open(SHARED_PLATES / file) as image:
        found = reader.read(image.convert("RGB"))
        label = parse_label(found, image.width)
        size = image.size
    assert words <= {"".join(ch for ch in w.text if ch.isalpha()) for w in found}
    assert label.plate_number.value == number
    assert label.latin_name.value.startswith(latin)
    for w in found:
        x, y, bw, bh = w.box
        assert 0 <= x and 0 <= y and x + bw <= size[0] and y + bh <= size[1] and 0 <= w.confidence <= 1


# --- the asset end to end -------------------------------------------------------------------------


@needs_tesseract
@needs_plates
def test_ocr_text_asset_seals_words_and_labels(loopback_hub, tmp_path_factory):
    home = make_demo_home(loopback_hub, tmp_path_factory, "ocr", ["tesseract"],
                          plate_files=[SHARED_PLATES / PARROT], license_opt_in=["tesseract"])  # fmt: skip
    config = {"header_scales": [2.0], "header_norm_scales": [], "caption_scales": [3.0], "plate_line_scales": [2.0],
              "caption_line_scales": []}
    runs = materialize_pin_ranges(home.defs, home.instance, job_name(OCR_ASSET), OCR_ASSET, config, home.pin_key, None)
    assert len(runs) == 1 and runs[0].success
    (pair,) = home.store.sealed_pairs(home.pin_key).values()
    table = pq.read_table(pair.artifact_path)
    assert table.schema == text_schema()
    (row,) = table.to_pylist()
    assert "PSITACUS" in row["text"] and row["prompt_id"] is None and row["token_count"] == len(row["words"])
    assert pair.preprocess_tag.endswith(
        "scales(header=2,caption=3):lanczos|psm=11|oem=1|plate-line(psm=7,whitelist=PLATE.,CLXVI0123456789,"
        "roman-glyphs-2,roman-templates-1)@2:lanczos|label-parse-6"
    )
    assert {"header@2", "caption@3", "header@line2"} <= {w["pass_id"] for w in row["words"]} <= {
        "header@2", "caption@3", "header@line2", "header@glyphs2", "header@templates2", "header@tail2"}  # fmt: skip
    assert label_of(row)["latin_name"]["value"] == "Psitacus carolinensis"
    plate = home.catalog.plates[pair.plate_id]
    outcomes = check_text_pairs([pair], {plate.sha256: (plate.height, plate.width)}, PromptRegistry.load())
    assert set(outcomes) == set(TEXT_CHECK_DESCRIPTIONS) and all(o.passed and o.checked for o in outcomes.values())
    (record,) = home.instance.fetch_materializations(dg.AssetKey(OCR_ASSET), limit=5).records
    metadata = record.asset_materialization.metadata
    assert metadata["latin_name"].value == "Psitacus carolinensis" and metadata["plate_number"].value == "26"
    # text never overwrites identity: the catalog's plate is unchanged
    assert home.resource.catalog().plates[pair.plate_id] == plate
    # a word box moved off the plate fails the blocking check
    bad = check_text_pairs([pair], {plate.sha256: (10, 10)}, PromptRegistry.load())
    assert not bad["text_boxes_inside_plate"].passed
    # a record naming a prompt must carry the registry's sha256 for it; confidences stay in [0, 1]
    prompt = PromptRegistry.load().get("florence.ocr")
    words = [{**row["words"][0], "confidence": 1.5}]
    for sha, ok in ((prompt.sha256, True), ("0" * 64, False)):
        forged = {**row, **prompt.record(), "prompt_sha256": sha, "words": words}
        path = tmp_path_factory.mktemp("forged") / "text.parquet"
        pq.write_table(text_table([forged]), path)
        outcomes = check_text_pairs([replace(pair, artifact_path=path)], {plate.sha256: (plate.height, plate.width)}, PromptRegistry.load())
        assert outcomes["text_prompt_sha256_matches_registry"].passed is ok
        assert not outcomes["text_confidences_in_range"].passed


@needs_tesseract
def test_awb_pin_tesseract_pins_the_installed_engine_and_a_new_version_is_a_new_pin(capsys, tmp_path, monkeypatch):
    from awb_dagster.cli import main
    from awb_dagster.registry import tesseract_install
    from awb_dagster.registry.lock import PinLock

    def pin() -> str:
        assert main(["pin", "tesseract", "--home", str(tmp_path)]) == 0
        return capsys.readouterr().out

    first = pin()
    assert pin().startswith("unchanged tesseract")  # the same engine: the same pin
    installed = tesseract_install.find_tesseract()
    monkeypatch.setattr(tesseract_install, "find_tesseract", lambda languages=("eng",): replace(installed, version="9.9.9"))
    upgraded = pin()
    pins = PinLock.load(tmp_path / "pins.lock.json").pins_for("tesseract")
    assert len(pins) == 2 and pins[0].config["version"] == installed.version and pins[1].config["version"] == "9.9.9"
    assert pins[0].key in first and pins[1].key in upgraded and pins[0].key != pins[1].key
