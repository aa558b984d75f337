"""The `awb` command: registry views, pins, plates, the sensor, and the offline demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from awb_dagster.cli import main
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # user errors exit 2 with a one-line message
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_registry_show_resolves_alias(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "registry", "show", "facebook/sam-vit-h", "--home", str(tmp_path))
    assert code == 0
    assert json.loads(out)["id"] == "facebook/sam-vit-huge"


@pytest.mark.parametrize(
    ("alias", "hint"),
    [
        ("llava-hf/llava-1.6-13b-hf", "LLaVA"),
        ("llava-hf/llava-1.6-34b-hf", "LLaVA"),
        ("IDEA-Research/detrex-mask2former", "facebook/mask2former-swin-large-ade-semantic"),
    ],
)
def test_registry_show_dead_alias_says_what_to_use(capsys, tmp_path, alias, hint):
    code, _, err = run_cli(capsys, "registry", "show", alias, "--home", str(tmp_path))
    assert code == 2
    assert "no model" in err and hint in err


def test_registry_list_json_and_check(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "registry", "list", "--json", "--home", str(tmp_path))
    rows = json.loads(out)
    # 41 hub ids, 2 native Florence-2 conversions, Tesseract, 7 torchvision (6 baselines, the demo's tiny ConvNeXt),
    # 3 original SAM files, 21 demo
    assert code == 0 and len(rows) == 75
    assert set(rows[0]) == {"id", "family", "role", "status", "license", "pin"}
    assert {r["status"] for r in rows} == {"ideas"}  # nothing is pinned in a fresh home
    code, out, _ = run_cli(capsys, "registry", "check", "--home", str(tmp_path))
    assert code == 0
    assert "facebook/dinov2-large: ideas (missing: pin)" in out
    assert "torchvision/resnet50: ideas (missing: pin)" in out
    assert "facebook/sam-vit-base: ideas (missing: pin)" in out  # the SAM adapter runs sealed


def test_registry_appendix_has_a_card_per_instrument(capsys, tmp_path):
    out_file = tmp_path / "appendix.md"
    code, _, _ = run_cli(capsys, "registry", "appendix", "--out", str(out_file), "--home", str(tmp_path))
    text = out_file.read_text()
    assert code == 0
    for model in ("openai/clip-vit-large-patch14", "facebook/sam-vit-huge", "tesseract", "torchvision/vgg16"):
        assert model in text


def test_pin_reports_hub_errors_by_model(capsys, tmp_path, loopback_hub):
    # facebook/dinov2-base is in the registry but not on the loopback hub: a 404.
    code, _, err = run_cli(
        capsys, "pin", "facebook/dinov2-base", "--endpoint", loopback_hub.endpoint, "--home", str(tmp_path)
    )
    assert code == 1
    assert "facebook/dinov2-base" in err and "not found" in err


def test_pin_then_sensor_registers_partitions(capsys, tmp_path, loopback_hub):
    from awb_dagster.assets.plates import plate_and_pin_sensor
    from awb_dagster.resources import AwbHome

    code, out, _ = run_cli(
        capsys, "pin", "awb-demo/tiny-dinov2", "--endpoint", loopback_hub.endpoint, "--home", str(tmp_path)
    )
    assert code == 0 and "pinned awb-demo/tiny-dinov2 -> demo-tiny-dinov2@" in out
    pin_key = out.split("-> ")[1].split()[0]
    code, out, _ = run_cli(capsys, "plates", "add", str(SAMPLE_PLATES_DIR), "--home", str(tmp_path))
    assert code == 0 and "6 added" in out
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"home": AwbHome(home=str(tmp_path))})
        result = plate_and_pin_sensor(context)
        requests = {r.partitions_def_name: list(r.partition_keys) for r in result.dynamic_partitions_requests}
    assert len(requests["plates"]) == 6
    assert requests["dinov2_pins"] == [pin_key]
    assert pin_key.endswith(loopback_hub.shas["awb-demo/tiny-dinov2"][:10])


def test_plates_add_names_each_rejected_file(capsys, tmp_path):
    plates = tmp_path / "plates"
    plates.mkdir()
    (plates / "empty.jpg").write_bytes(b"")
    (plates / "notes.png").write_text("not an image")
    good = (SAMPLE_PLATES_DIR / "audubon_p421_brown-pelican.jpg").read_bytes()
    (plates / "half.jpg").write_bytes(good[: len(good) // 2])
    (plates / "pelican.jpg").write_bytes(good)
    code, out, _ = run_cli(capsys, "plates", "add", str(plates), "--home", str(tmp_path / "home"))
    assert code == 0
    assert "1 added" in out
    assert f"rejected {plates / 'empty.jpg'}: zero bytes" in out
    assert f"rejected {plates / 'notes.png'}: not an image" in out
    assert f"rejected {plates / 'half.jpg'}: truncated image data" in out
    rejections = json.loads((tmp_path / "home" / "plates" / "rejections.json").read_text())
    assert len(rejections) == 3


def test_demo_runs_end_to_end_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the demo must not need any real hub
    result = subprocess.run(
        [sys.executable, "-m", "awb_dagster.cli", "demo", "--home", str(tmp_path / "home")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Quiet: shard progress bars, transformers warnings and Dagster's INFO lines go to the home's log.
    for noise in ("Writing model shards", "[transformers]", " - dagster - INFO - "):
        assert noise not in result.stderr, result.stderr[-2000:]
    (log,) = (tmp_path / "home" / "logs").glob("demo-*.log")
    assert f"library and Dagster logs go to {log}" in result.stdout and "dagster - INFO" in log.read_text()
    out = result.stdout
    for family in ("clip", "siglip", "dinov2", "biomedclip"):
        assert f"\n{family} " in out
    assert "lineage of one embedding" in out and "(verified)" in out
    assert "\natlas (" in out and "disagreement, headline" in out and "topology report (consensus" in out
    assert "\nsam masks demo-tiny-sam@" in out and " masks, coverage " in out
    manifests = list(Path(tmp_path / "home" / "store" / "runs").glob("*/run.manifest.json"))
    kinds = sorted(json.loads(m.read_text())["kind"] for m in manifests)
    regions = ["clip-segment-embeddings", "dinov2-segment-embeddings", "clip-tile-embeddings", "dinov2-tile-embeddings"]
    probes = ["convnet-embeddings", "wikiart-logits", "places365-logits", "aesthetic-scores", "aesthetic-image-scores", "probe-axes"]
    ocr = ["ocr-text"] if shutil.which("tesseract") else []  # the demo skips OCR, saying so, without it
    boxes = ["grounding-dino-detections", "box-masks", "clip-segment-embeddings"]  # text -> boxes -> masks -> embeddings
    assert kinds == sorted(["clip-embeddings", "siglip-embeddings", "dinov2-embeddings", "biomedclip-embeddings", "atlas", "ensemble-disagreement",
                            "topology-report", "sam-masks", "sam-masks", "semantic-segmentation", *regions, *probes,
                            *ocr, "blip-captions", "foreground-masks", *boxes])  # fmt: skip
    assert "\ncaption of " in out and "prompt: caption.plain@v1 sha256 " in out and '"max_new_tokens": 8' in out
    assert "\nsam masks demo-tiny-sam-hq@" in out
    assert "\nforeground_masks demo-tiny-u2net@" in out and "against SAM pin demo-tiny-sam@" in out
    assert "\nsemantic segmentation demo-tiny-mask2former@" in out and " classes (" in out
    assert "\nregion embeddings (" in out and "segment_embeddings" in out and "tile_embeddings" in out
    assert "lineage of one segment embedding" in out and "the mask this segment was cut from" in out
    assert "\nawb search 'a plate of a bird' --pin demo-tiny-clip@" in out and "sealed embeddings, cosine" in out
    assert "\ntext -> boxes -> masks -> embeddings (" in out and "the detected box this mask was prompted with" in out

    # A second demo on the same home reuses its hub, pins and sealed records.
    again = subprocess.run(
        [sys.executable, "-m", "awb_dagster.cli", "demo", "--home", str(tmp_path / "home")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    lock = json.loads((tmp_path / "home" / "pins.lock.json").read_text())
    assert {model: len(pins) for model, pins in lock["pins"].items()} == {
        "awb-demo/tiny-clip": 1, "awb-demo/tiny-siglip": 1, "awb-demo/tiny-dinov2": 1, "awb-demo/tiny-sam": 1,
        "awb-demo/tiny-sam-hq": 1, "awb-demo/tiny-mask2former": 1, "awb-demo/tiny-aesthetic-mlp": 1,
        "awb-demo/tiny-convnext": 1, "awb-demo/tiny-detr": 1, "awb-demo/tiny-grounding-dino": 1,
        "awb-demo/tiny-wikiart-convnext": 1, "awb-demo/tiny-blip": 1, "awb-demo/tiny-u2net": 1, "awb-demo/tiny-biomedclip": 1,
        "awb-demo/tiny-places-birder": 1, "awb-demo/tiny-aesthetic-v1": 1,
        **({"tesseract": 1} if ocr else {}),
    }  # fmt: skip
    manifests = list(Path(tmp_path / "home" / "store" / "runs").glob("*/run.manifest.json"))
    embedding_runs = [m for m in manifests if json.loads(m.read_text())["kind"].endswith("-embeddings")]
    assert len(embedding_runs) == 5 + len(regions) + 1  # clip, siglip, dinov2, biomedclip, convnet; segments of box masks


def test_run_sam_family_from_the_cli(capsys, tmp_path, loopback_hub):
    home = str(tmp_path / "home")
    code, out, err = run_cli(capsys, "pin", "awb-demo/tiny-sam", "--endpoint", loopback_hub.endpoint, "--home", home)
    assert code == 0, err
    plates = tmp_path / "plates"
    plates.mkdir()
    (plates / "pelican.jpg").write_bytes((SAMPLE_PLATES_DIR / "audubon_p421_brown-pelican.jpg").read_bytes())
    assert run_cli(capsys, "plates", "add", str(plates), "--home", home)[0] == 0
    code, out, err = run_cli(capsys, "run", "--family", "sam", "--home", home)
    assert code == 0, err
    assert "ok demo-tiny-sam@" in out and "1 plates" in out
    code, out, _ = run_cli(capsys, "runs", "--home", home)
    assert "sam" in out
