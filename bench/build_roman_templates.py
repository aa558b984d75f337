"""Build awb_dagster/instruments/data/roman_templates.json (roman_templates.TEMPLATE_VERSION) from
the header numerals of TUNING plates only (bench/ocr_truth.tsv, ocr_truth_extra.tsv and the
session-10 and session-11 holdouts, split tune-seen since sessions 11 and 12; never the held-out
bench/ocr_truth_holdout4.tsv). The data file in the package was built before session 12 (holdout3 not in it).

    python bench/build_roman_templates.py --truth bench/ocr_truth.tsv:../shared/plates \\
        --truth bench/ocr_truth_extra.tsv:DIR --truth bench/ocr_truth_holdout2.tsv:DIR

Per plate: the header band is read at scale 3 (Tesseract, the reader's settings otherwise), the
numeral crop after the most confident PLATE word is segmented into glyphs
(roman_templates.numeral_glyphs at scale 3), and when the glyph count equals the number of
letters of the engraved numeral (plate_number_as_engraved), or of its tokens with runs of I's
joined (LVII -> L V II), each glyph is labelled with its letter(s). A template is the mean of its
class's normalized glyphs, with their mean width/height. Plates whose count matches neither are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from awb_dagster.instruments.roman_templates import SIZE, TEMPLATE_VERSION, TEMPLATES_PATH, WIDTH_RATIO, normalize, numeral_glyphs
from awb_dagster.instruments.tesseract import _PLATE_WORD, HEADER_ZONE, TesseractReader, ZoneSettings, numeral_crop
from awb_dagster.registry.model import Registry
from awb_dagster.registry.tesseract_install import capture_tesseract_pin

HERE = Path(__file__).resolve().parent
SCALE = 3.0
sys.path.insert(0, str(HERE))
from ocr_accuracy import read_truth  # noqa: E402


def labels_for(engraved: str, count: int) -> list[str] | None:
    match = re.search(r"([CLXVI]+)\.?\s*$", engraved.replace(",", " ").replace(".", " ").strip())
    if match is None:
        return None
    letters = match.group(1)
    joined = re.findall(r"I+|[CLXV]", letters)
    for labels in (list(letters), joined):
        if len(labels) == count:
            return labels
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", action="append", required=True, help="TSV:PLATES_DIR (tuning truth files only)")
    parser.add_argument("--out", type=Path, default=TEMPLATES_PATH)
    args = parser.parse_args(argv)
    instrument = Registry.load().get("tesseract").instrument
    reader = TesseractReader(instrument, capture_tesseract_pin(instrument), ZoneSettings(
        header_scales=(SCALE,), caption_scales=(1.0,), plate_line_scales=(), caption_line_scales=()))  # fmt: skip
    vectors: dict[str, list[np.ndarray]] = {}
    aspects: dict[str, list[float]] = {}
    used, skipped = [], []
    for spec in args.truth:
        truth, plates = spec.split(":")
        if "holdout4" in truth:
            raise SystemExit("bench/ocr_truth_holdout4.tsv is the held-out set: never build templates from it")
        for row in read_truth(Path(truth)):
            if row["split"] == "holdout":
                raise SystemExit(f"{truth}: {row['file']} is a held-out row")
            with Image.open(Path(plates) / row["file"]) as image:
                grey = ImageOps.grayscale(image.convert("RGB"))
            words = [w for w in reader.read(grey.convert("RGB")) if w.zone == HEADER_ZONE and _PLATE_WORD.match(w.text.upper())]
            plate = max(words, key=lambda w: w.confidence) if words else None
            crop = numeral_crop(plate, grey.width, grey.height) if plate else None
            if plate is None or crop is None:
                skipped.append(f"{row['file']}: no PLATE word")
                continue
            region, height = grey.crop(crop), plate.box[3]
            scaled = np.asarray(region.resize((round(region.width * SCALE), round(region.height * SCALE)), Image.Resampling.LANCZOS))
            glyphs = numeral_glyphs(scaled, 0.8 * height * SCALE) or []
            labels = labels_for(row["plate_number_as_engraved"], len(glyphs))
            if labels is None:
                skipped.append(f"{row['file']}: {len(glyphs)} glyphs for {row['plate_number_as_engraved']!r}")
                continue
            used.append(f"{truth}:{row['file']} ({''.join(labels)} as {' '.join(labels)})")
            for label, mask in zip(labels, glyphs):
                vectors.setdefault(label, []).append(normalize(mask))
                aspects.setdefault(label, []).append(mask.shape[1] / mask.shape[0])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    payload = {
        "version": TEMPLATE_VERSION, "size": [SIZE, SIZE * WIDTH_RATIO],
        "provenance": {"builder": "bench/build_roman_templates.py", "repo_commit": commit, "scale": SCALE,
                       "plates_used": used, "plates_skipped": skipped,
                       "source": "nathanbuchar/audubon-bird-plates-for-supernote@5f0f47d62d93b290cdfa64afb7f8d9764379a9ce and ../shared/plates"},
        "templates": {label: {"count": len(vs), "aspect": round(float(np.mean(aspects[label])), 4), "vector": [round(float(v), 4) for v in np.mean(vs, axis=0)]}
                      for label, vs in sorted(vectors.items())},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    print(f"{len(used)} plates used, {len(skipped)} skipped: " + "; ".join(skipped))
    print({label: len(vs) for label, vs in sorted(vectors.items())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
