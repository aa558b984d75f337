"""Florence-2 through transformers' native Florence2 classes (seed 10.2, issue 11): the tiny
checkpoint in the converted florence-community repos' layout, served by the loopback hub and pinned;
each text task token is its own asset whose sealed records carry its prompt and decoding."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

import pyarrow.parquet as pq
import pytest
from demo_homes import make_demo_home
from PIL import Image

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.florence_layout import (
    PUBLISHED,
    REAL_SIZES,
    config_json,
    generation_config_json,
    preprocessor_config_json,
    processor_config_json,
    tokenizer_files,
)
from awb_dagster.demo.tiny_florence import FLORENCE_DEMO_REPO, build_tiny_florence_files, publish_tiny_florence
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.florence import florence_task
from awb_dagster.producers.florence_tasks import FLORENCE_TASK_PRODUCERS, TASK_PROMPTS
from awb_dagster.provenance.caption_records import florence_pair_key
from awb_dagster.registry.model import Registry
from awb_dagster.registry.prompts import Decoding, PromptRegistry
from awb_dagster.runner import materialize_pin_ranges

PROMPTS = PromptRegistry.load()
# The files of both converted repos (README.md aside): what the tiny repo must carry for the same
# loading code to be exercised.
CONVERTED_REPO_FILES = set(PUBLISHED["florence-community/Florence-2-large"]["files"])


@pytest.fixture(scope="module")
def tiny_files() -> dict[str, bytes]:
    return build_tiny_florence_files()


def real_small_files(size: str) -> dict[str, bytes]:
    """The converted repos' small files as florence_layout writes them with the real values."""
    return {"config.json": config_json(REAL_SIZES[size]), "generation_config.json": generation_config_json(),
            "preprocessor_config.json": preprocessor_config_json(), "processor_config.json": processor_config_json(),
            **tokenizer_files()}  # fmt: skip


@pytest.mark.parametrize("size", ["base", "large"])
def test_the_layout_writer_reproduces_the_published_files(size):
    published = PUBLISHED[f"florence-community/Florence-2-{size}"]
    written = real_small_files(size)
    assert {name: hashlib.sha256(data).hexdigest() for name, data in written.items()} == {
        name: published["files"][name] for name in written}  # fmt: skip


def test_the_published_files_load_natively(tiny_files, tmp_path):
    """The real config.json of both repos builds the installed transformers' Florence2 model with the
    published parameter count; the real processor files (with their auto_map to remote code) load
    into the native Florence2Processor: 768x768 pixels, 577 image tokens, no remote code."""
    import torch
    from transformers import Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    for size in ("base", "large"):
        config = Florence2Config.from_dict(json.loads(real_small_files(size)["config.json"]))
        with torch.device("meta"):
            model = Florence2ForConditionalGeneration(config)
        assert sum(p.numel() for p in model.parameters()) == PUBLISHED[f"florence-community/Florence-2-{size}"]["parameters"]
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes(tiny_files[name])
    for name in ("preprocessor_config.json", "processor_config.json"):
        (tmp_path / name).write_bytes(real_small_files("large")[name])
    processor = Florence2Processor.from_pretrained(tmp_path)
    inputs = processor(text="<CAPTION>", images=Image.new("RGB", (90, 120)), return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 768, 768) and processor.num_image_tokens == 577
    assert (inputs["input_ids"] == processor.image_token_id).sum() == 577


def test_tiny_florence_has_the_converted_repos_layout(tiny_files):
    assert set(tiny_files) == CONVERTED_REPO_FILES
    config = json.loads(tiny_files["config.json"])
    added = json.loads(tiny_files["added_tokens.json"])
    assert config["image_token_id"] == added["<image>"] == max(added.values())  # <image> added last, as converted
    assert config["text_config"]["vocab_size"] % 64 == 0 and config["text_config"]["vocab_size"] > added["<image>"]


def test_only_florence_text_task_tokens_are_florence_prompts():
    assert [florence_task(PROMPTS.get(prompt_id)) for prompt_id in TASK_PROMPTS.values()] == [
        "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>"]  # fmt: skip
    caption = PROMPTS.get("florence.caption")
    for bad, message in ((PROMPTS.get("caption.plain"), "not a Florence-2 text task"),
                         (replace(caption, template="<OD>"), "region tasks answer boxes"),
                         (replace(caption, template="<CAPTION> of a bird"), "exactly one task token"),
                         (replace(caption, task="ocr"), "is an 'caption' task, the prompt declares 'ocr'")):  # fmt: skip
        with pytest.raises(InstrumentError, match=message):
            florence_task(bad)


def test_each_florence_task_is_its_own_sealed_instrument(loopback_hub, tmp_path_factory, tiny_files):
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR

    publish_tiny_florence(loopback_hub.hub, files=tiny_files)
    home = make_demo_home(loopback_hub, tmp_path_factory, "florence", [FLORENCE_DEMO_REPO],
                          plate_files=[SAMPLE_PLATES_DIR / "audubon_p026_carolina-parrot.jpg"])  # fmt: skip
    pin = home.pins[FLORENCE_DEMO_REPO]
    config = {"method": "greedy", "num_beams": 1, "max_new_tokens": 6}
    tags = set()
    for producer in FLORENCE_TASK_PRODUCERS:
        (run,) = materialize_pin_ranges(home.defs, home.instance, job_name(producer.asset_name), producer.asset_name, config, pin)
        assert run.success, producer.asset_name  # the blocking caption checks passed too
        (pair,) = home.store.sealed_pairs(florence_pair_key(pin, producer.task)).values()
        (row,) = pq.read_table(pair.artifact_path).to_pylist()
        prompt = PROMPTS.get(TASK_PROMPTS[producer.task])
        assert (row["prompt_id"], row["prompt_version"], row["prompt_sha256"]) == (prompt.id, prompt.version, prompt.sha256)
        assert json.loads(row["decoding"]) == asdict(Decoding(method="greedy", num_beams=1, max_new_tokens=6))
        assert f"task={prompt.template}+post_process_generation" in row["preprocess_tag"] and prompt.tag() in row["preprocess_tag"]
        assert row["token_count"] == len(row["token_ids"]) <= 6 and bool(row["text"]) != bool(row["empty_reason"])
        assert row["model_id"] == FLORENCE_DEMO_REPO and row["pin_key"] == pin
        tags.add(row["preprocess_tag"])
    assert len(tags) == len(FLORENCE_TASK_PRODUCERS)  # four instruments, never one record for two tasks
    assert not home.store.sealed_pairs(pin)  # nothing sealed under the bare pin: every task keeps its own pairs


def test_florence_large_refuses_a_small_device_before_loading(monkeypatch):
    from awb_dagster.instruments import captioner as captioner_module
    from awb_dagster.instruments import memory
    from awb_dagster.instruments.captioner import Captioner
    from awb_dagster.registry.lock import Pin

    monkeypatch.setattr(captioner_module, "load_pinned", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setattr(memory, "device_memory", lambda device: memory.DeviceMemory(f"{device} (fake 4 GiB)", 4.0, 4.0))
    large = Registry.load().get("florence-2-large").instrument
    pin = Pin(model_id=large.id, sha=PUBLISHED[large.id]["revision"], revision_requested="main", pipeline_tag="image-text-to-text",
              library_name="transformers", license="mit", gated=False, config={}, output_dim=None, input_size=None,
              pinned_at="2026-11-30T00:00:00+00:00", endpoint="https://huggingface.co", instrument_key=large.key)  # fmt: skip
    with pytest.raises(InstrumentError, match="florence-community/Florence-2-large needs 6 GiB of free device memory at float32"):
        Captioner(large, pin, PROMPTS.get("florence.ocr"), device="cpu", dtype="float32")


def test_awb_run_family_florence2_runs_every_task_asset():
    from awb_dagster.cli import build_parser
    from awb_dagster.commands import _family_assets

    assert build_parser().parse_args(["run", "--family", "florence2"]).family == "florence2"
    assert _family_assets("florence2") == [producer.asset_name for producer in FLORENCE_TASK_PRODUCERS]
    assert _family_assets("blip") == ["blip_captions"] and _family_assets("box-masks") == ["box_masks"]
