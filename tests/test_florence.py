"""Florence-2 through transformers' native Florence2 classes (seed 10.2, issue 11): the tiny
checkpoint in the converted florence-community repos' layout, served by the loopback hub and pinned;
each text task token is its own asset whose sealed records carry its prompt and decoding."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pyarrow.parquet as pq
import pytest
from demo_homes import make_demo_home

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.tiny_florence import FLORENCE_DEMO_REPO, build_tiny_florence_files, publish_tiny_florence
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.florence import florence_task
from awb_dagster.producers.florence_tasks import FLORENCE_TASK_PRODUCERS, TASK_PROMPTS
from awb_dagster.provenance.caption_records import florence_pair_key
from awb_dagster.registry.prompts import Decoding, PromptRegistry
from awb_dagster.runner import materialize_pin_ranges

PROMPTS = PromptRegistry.load()
# The files of florence-community/Florence-2-large@4271c66 (README.md aside) and, by their sha256,
# of Florence-2-base@00921df: what the tiny repo must carry for the same loading code to be exercised.
CONVERTED_REPO_FILES = {
    "added_tokens.json", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
    "preprocessor_config.json", "processor_config.json", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json", "vocab.json",
}  # fmt: skip


def test_tiny_florence_has_the_converted_repos_layout():
    files = build_tiny_florence_files()
    assert set(files) == CONVERTED_REPO_FILES
    config, generation = json.loads(files["config.json"]), json.loads(files["generation_config.json"])
    assert config["model_type"] == "florence2" and config["text_config"]["model_type"] == "bart"
    assert config["vision_config"]["model_type"] == "florence_vision" and config["text_config"]["vocab_size"] % 64 == 0
    assert {k: generation[k] for k in ("decoder_start_token_id", "forced_bos_token_id", "num_beams", "no_repeat_ngram_size")} == {
        "decoder_start_token_id": 2, "forced_bos_token_id": 0, "num_beams": 3, "no_repeat_ngram_size": 3}  # fmt: skip
    tokenizer = json.loads(files["tokenizer_config.json"])
    assert tokenizer["tokenizer_class"] == "BartTokenizer" and tokenizer["extra_special_tokens"] == {"image_token": "<image>"}
    assert set(json.loads(files["processor_config.json"])["post_processor_config"]) >= {"pure_text", "ocr"}
    assert json.loads(files["preprocessor_config.json"])["image_processor_type"] == "CLIPImageProcessor"


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


def test_each_florence_task_is_its_own_sealed_instrument(loopback_hub, tmp_path_factory):
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR

    publish_tiny_florence(loopback_hub.hub)
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
