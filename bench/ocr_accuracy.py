"""OCR accuracy of the Tesseract label-zone reader and the label parser against bench/ocr_truth.tsv
(the engraved captions of the Audubon plates in ../shared/plates, read by eye).

    python bench/ocr_accuracy.py                      # default zone settings, all plates
    python bench/ocr_accuracy.py --split tune-seen    # one split only
    python bench/ocr_accuracy.py --json results.json  # also write the figures as JSON
    python bench/ocr_accuracy.py --truth bench/ocr_truth_holdout4.tsv --plates DIR  # the held-out set

Splits (see PROTOCOL, printed with every run): tune, tune-seen (the session-9, -10 and -11
holdouts, looked at after their measurements, tuned on since), and holdout (bench/ocr_truth_holdout4.tsv).

Per plate: the parsed plate number (right when equal to the truth), whether the genus or the
species word of the Latin binomial is found in the parsed Latin name (exact word, case-folded),
whether either is found among any OCR words, and the parsed common name. Goal on held-out
plates: genus or species in the parsed name on >= 5 of 6, plate number on >= 4 of 6.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from PIL import Image

from awb_dagster.instruments.plate_label import PARSER_VERSION, parse_label
from awb_dagster.instruments.tesseract import TesseractReader, ZoneSettings
from awb_dagster.registry.model import Registry
from awb_dagster.registry.tesseract_install import capture_tesseract_pin

HERE = Path(__file__).resolve().parent
DEFAULT_PLATES = HERE.parent.parent / "shared" / "plates"


PROTOCOL = (
    "protocol: tune = bench/ocr_truth.tsv tune rows + bench/ocr_truth_extra.tsv (tuned on); tune-seen = the "
    "session-9 holdout of bench/ocr_truth.tsv and the session-10 and session-11 holdouts bench/ocr_truth_holdout2.tsv "
    "and ocr_truth_holdout3.tsv, whose misses were looked at after their measurements (tuned on since, no held-out "
    "figure); holdout = bench/ocr_truth_holdout4.tsv, 6 plates drawn and read by eye before any session-12 OCR change, "
    "never tuned on, measured once at the end of session 12"
)


def read_truth(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def _word_set(text: str) -> set[str]:
    return {"".join(ch for ch in part if ch.isalpha()).casefold() for part in text.split()}


def evaluate(reader: TesseractReader, plates: Path, truth: list[dict[str, str]]) -> list[dict[str, object]]:
    rows = []
    for row in truth:
        started = time.perf_counter()
        with Image.open(plates / row["file"]) as image:
            words = reader.read(image.convert("RGB"))
            label = parse_label(words, image.width)
        seconds = time.perf_counter() - started
        binomial = {row["genus"].casefold(), row["species"].casefold()}
        parsed_latin = label.latin_name.value if label.latin_name else ""
        all_words = set().union(*(_word_set(w.text) for w in words)) if words else set()
        number = label.plate_number.value if label.plate_number else None
        rows.append({
            "file": row["file"], "split": row["split"], "words": len(words), "seconds": round(seconds, 2),
            "plate_number_truth": int(row["plate_number"]), "plate_number": number,
            "plate_number_ok": number == int(row["plate_number"]),
            "latin_truth": f"{row['genus']} {row['species']}", "latin": parsed_latin,
            "binomial_word_ok": bool(binomial & _word_set(str(parsed_latin))),
            "binomial_word_in_ocr": bool(binomial & all_words),
            "common_truth": row["common_name"], "common": label.common_name.value if label.common_name else "",
        })  # fmt: skip
    return rows


def summary(rows: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in sorted({str(r["split"]) for r in rows}) + ["all"]:
        chosen = [r for r in rows if split in ("all", r["split"])]
        out[split] = {
            "plates": len(chosen),
            "plate_number_ok": sum(bool(r["plate_number_ok"]) for r in chosen),
            "binomial_word_ok": sum(bool(r["binomial_word_ok"]) for r in chosen),
            "binomial_word_in_ocr": sum(bool(r["binomial_word_in_ocr"]) for r in chosen),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", type=Path, default=DEFAULT_PLATES)
    parser.add_argument("--truth", type=Path, default=HERE / "ocr_truth.tsv")
    parser.add_argument("--split", choices=("all", "tune", "tune-seen", "holdout"), default="all")
    parser.add_argument("--json", type=Path, help="write settings, rows and summary here")
    parser.add_argument("--summary-only", action="store_true",
                        help="print no per-plate rows (for a held-out set measured while tuning is still going on)")  # fmt: skip
    defaults = ZoneSettings()
    parser.add_argument("--header-fraction", type=float, default=defaults.header_fraction)
    parser.add_argument("--caption-fraction", type=float, default=defaults.caption_fraction)
    scales = lambda text: tuple(float(x) for x in text.split(","))  # noqa: E731
    parser.add_argument("--header-scales", type=scales, default=defaults.header_scales, help="e.g. 2,3,4")
    parser.add_argument("--header-norm-scales", type=lambda t: scales(t) if t else (), default=defaults.header_norm_scales,
                        help="header re-reads after local contrast normalization, e.g. 3; '' turns them off")  # fmt: skip
    parser.add_argument("--caption-scales", type=scales, default=defaults.caption_scales, help="e.g. 3,2")
    parser.add_argument("--plate-line-scales", type=lambda t: scales(t) if t else (), default=defaults.plate_line_scales,
                        help="header line re-reads (psm 7 + glyph numeral), e.g. 2,3,4; '' turns them off")  # fmt: skip
    parser.add_argument("--caption-line-scales", type=lambda t: scales(t) if t else (), default=defaults.caption_line_scales,
                        help="binomial row re-reads (psm 6), e.g. 2,3; '' turns them off")  # fmt: skip
    parser.add_argument("--psm", type=int, default=defaults.psm)
    args = parser.parse_args(argv)
    instrument = Registry.load().get("tesseract").instrument
    reader = TesseractReader(instrument, capture_tesseract_pin(instrument), ZoneSettings(
        header_fraction=args.header_fraction, caption_fraction=args.caption_fraction, header_scales=args.header_scales, header_norm_scales=args.header_norm_scales, caption_scales=args.caption_scales,
        plate_line_scales=args.plate_line_scales, caption_line_scales=args.caption_line_scales, psm=args.psm
    ))
    truth = [r for r in read_truth(args.truth) if args.split in ("all", r["split"])]
    rows = evaluate(reader, args.plates, truth)
    seconds = [float(r["seconds"]) for r in rows]
    print(PROTOCOL)
    print(f"preprocess tag {reader.preprocess_tag} | parser {PARSER_VERSION}")
    for r in [] if args.summary_only else rows:
        print(
            f"{r['file'][:24]:24} {r['split']:9} number {str(r['plate_number']):>5} / {r['plate_number_truth']:<4}"
            f" {'ok' if r['plate_number_ok'] else '--'}  latin {r['latin']!s:28} {'ok' if r['binomial_word_ok'] else '--'}"
            f"  common {r['common']!s:24} {r['seconds']:5.1f}s"
        )
    totals = summary(rows)
    for split, figures in totals.items():
        print(f"{split:9} plates {figures['plates']}: plate number {figures['plate_number_ok']}, binomial word "
              f"{figures['binomial_word_ok']} (in any OCR word {figures['binomial_word_in_ocr']})")  # fmt: skip
    print(f"seconds per plate: mean {sum(seconds) / max(1, len(seconds)):.2f}, max {max(seconds, default=0):.2f}")
    if args.json:
        payload = {
            "protocol": PROTOCOL, "preprocess_tag": reader.preprocess_tag, "parser": PARSER_VERSION, "pin": reader.pin.key,
            "command": " ".join(["python", "bench/ocr_accuracy.py", *(argv if argv is not None else sys.argv[1:])]),
            "rows": rows, "summary": totals, "seconds_per_plate_mean": round(sum(seconds) / max(1, len(seconds)), 2),
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
