"""Captioners (seed 10.2): tiny random-weight checkpoints of BLIP, BLIP-2 (OPT and FLAN-T5) and
Qwen2-VL, served by the loopback hub, pinned and loaded at their sha; the caption contract; memory
refusal before loading; a changed prompt or decoding is a new tag; blip_captions end to end."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from demo_homes import make_demo_home
from PIL import Image, ImageDraw

from awb_dagster.assets.factory import job_name
from awb_dagster.demo.tiny_captioners import CAPTION_DEMO_REPOS, publish_tiny_captioners
from awb_dagster.instruments import captioner as captioner_module
from awb_dagster.instruments import memory
from awb_dagster.instruments.captioner import Captioner
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.provenance.caption_records import CAPTION_PRESENT, TOKENS_CONSISTENT, caption_table, check_caption_pairs
from awb_dagster.provenance.text_records import PROMPT_SHA_MATCHES
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.registry.prompts import Decoding, Prompt, PromptRegistry
from awb_dagster.registry.roster import RegistryError, load_roster
from awb_dagster.runner import materialize_pin_ranges

BLIP = "awb-demo/tiny-blip"
PROMPTS = PromptRegistry.load()


@pytest.fixture(scope="module")
def pins(loopback_hub, tmp_path_factory):
    """Repo id -> pin of every tiny captioner, and the cache their files were fetched into."""
    publish_tiny_captioners(loopback_hub.hub)
    cache = tmp_path_factory.mktemp("caption-cache")
    registry = Registry.load()
    return {repo: capture_pin(registry.get(repo).instrument, endpoint=loopback_hub.endpoint, cache_dir=cache)
            for repo in CAPTION_DEMO_REPOS}, cache  # fmt: skip


def plate_image() -> Image.Image:
    image = Image.new("RGB", (120, 90), (230, 220, 200))
    ImageDraw.Draw(image).ellipse((30, 20, 90, 70), fill=(40, 90, 160))
    return image


def load(pins, repo: str, prompt: Prompt, decoding: Decoding = Decoding(max_new_tokens=5), instrument=None) -> Captioner:
    by_repo, cache = pins
    instrument = instrument or Registry.load().get(repo).instrument
    return Captioner(instrument, by_repo[repo], prompt, decoding, device="cpu", cache_dir=cache)


@pytest.mark.parametrize("repo", list(CAPTION_DEMO_REPOS))
def test_each_architecture_loads_at_its_pin_and_captions(pins, repo):
    prompt = PROMPTS.get("caption.detailed" if "qwen" in repo else "caption.plain")
    captioner = load(pins, repo, prompt)
    first = captioner.caption(plate_image())
    assert first == captioner.caption(plate_image())  # greedy decoding of the same plate
    assert 0 <= len(first.token_ids) <= 5 and not set(first.token_ids) & set(captioner.processor.tokenizer.all_special_ids)
    assert bool(first.text) != bool(first.empty_reason)  # text, or the reason there is none
    assert captioner.preprocess_tag.endswith(f"|{prompt.tag()}|{Decoding(max_new_tokens=5).tag()}")
    described = captioner.describe()
    assert described["sha"] == captioner.pin.sha and described["prompt"]["prompt_sha256"] == prompt.sha256


def test_a_changed_prompt_or_decoding_is_a_new_tag(pins):
    plain = PROMPTS.get("caption.plain")
    edited = replace(plain, template=plain.template + " a bird")  # same id and version, another template
    tags = {
        load(pins, BLIP, plain).preprocess_tag,
        load(pins, BLIP, edited).preprocess_tag,
        load(pins, BLIP, plain, Decoding(method="beam", num_beams=2, max_new_tokens=5)).preprocess_tag,
    }
    assert len(tags) == 3
    with pytest.raises(InstrumentError, match="a captioner takes one 'caption' prompt"):
        load(pins, BLIP, PROMPTS.get("florence.ocr"))


def test_memory_refusal_comes_before_any_load(pins, monkeypatch):
    loads = []
    monkeypatch.setattr(captioner_module, "load_pinned", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    monkeypatch.setattr(memory, "device_memory", lambda device: memory.DeviceMemory(f"{device} (fake 8 GiB)", 7.5, 8.0))
    big = Registry.load().get("Qwen/Qwen2-VL-72B-Instruct").instrument
    pin = replace(pins[0][BLIP], model_id=big.id)
    with pytest.raises(InstrumentError) as refused:
        Captioner(big, pin, PROMPTS.get("caption.detailed"), device="cpu", dtype="bfloat16")
    message = str(refused.value)
    assert "Qwen/Qwen2-VL-72B-Instruct needs 160 GiB" in message and "at bfloat16" in message
    assert "cpu (fake 8 GiB) has 7.5 GiB free of 8.0 GiB" in message and "nothing was loaded" in message
    assert loads == []
    # float32 doubles a 16-bit need: a 5 GiB row passes at bfloat16 on 7.5 GiB and is refused at float32
    small = replace(big, min_memory_gb=5.0)
    assert memory.require_memory(small, torch.device("cpu"), torch.bfloat16).free_gb == 7.5
    with pytest.raises(InstrumentError, match="needs 10 GiB of free device memory at float32"):
        memory.require_memory(small, torch.device("cpu"), torch.float32)


def test_roster_validates_min_memory_gb(tmp_path):
    row = 'id = "a/b"\nkey = "b"\nfamily = "blip"\nrole = "r"\nsection = "10.2"\nsource = "hf"\n'
    for value, ok in (("12", True), ("2.5", True), ("0", False), ('"lots"', False)):
        path = tmp_path / "roster.toml"
        path.write_text(f"[[instrument]]\n{row}min_memory_gb = {value}\n", encoding="utf-8")
        if ok:
            (instrument,), _ = load_roster(path)
            assert instrument.min_memory_gb == float(value)
        else:
            with pytest.raises(RegistryError, match="field 'min_memory_gb': must be a non-empty positive number"):
                load_roster(path)


def test_caption_checks_block_bad_records(tmp_path):
    prompt = PROMPTS.get("caption.plain")
    good = {"record_id": "r-good", "plate_id": "p", "plate_sha256": "s", "model_id": "m", "model_sha": "x", "pin_key": "k",
            "preprocess_tag": "t", "run_id": "run", "scope": "plate", "text": "a bird", "empty_reason": None, **prompt.record(),
            "decoding": json.dumps({"max_new_tokens": 3}), "token_ids": [5, 6], "token_count": 2}  # fmt: skip
    bad = [
        {**good, "record_id": "r-sha", "prompt_sha256": "0" * 64},
        {**good, "record_id": "r-empty", "text": "", "token_ids": [], "token_count": 0},
        {**good, "record_id": "r-count", "token_ids": [5, 6, 7, 8], "token_count": 4},
    ]
    path = tmp_path / "captions.parquet"
    pq.write_table(caption_table([good, *bad]), path)
    pair = SimpleNamespace(run_id="run", artifact="captions.parquet", artifact_path=path, plate_id="p",
                           record_ids=[row["record_id"] for row in (good, *bad)])  # fmt: skip
    outcomes = check_caption_pairs([pair], PROMPTS)
    failed = {name: [f.record_id for f in outcome.failures] for name, outcome in outcomes.items()}
    assert failed == {PROMPT_SHA_MATCHES: ["r-sha"], CAPTION_PRESENT: ["r-empty"], TOKENS_CONSISTENT: ["r-count"]}
    assert all(outcome.checked == 4 for outcome in outcomes.values())


def test_blip_captions_end_to_end(pins, loopback_hub, tmp_path_factory):
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR

    home = make_demo_home(loopback_hub, tmp_path_factory, "captions", [BLIP],
                          plate_files=[SAMPLE_PLATES_DIR / "audubon_p026_carolina-parrot.jpg"])  # fmt: skip
    pin = home.pins[BLIP]
    asset = "blip_captions"
    runs = [
        materialize_pin_ranges(home.defs, home.instance, job_name(asset), asset, config, pin, None)
        for config in ({"max_new_tokens": 4}, {"max_new_tokens": 4, "prompt_id": "caption.detailed"})
    ]
    assert all(run.success for (run,) in runs)
    pairs = list(home.store.sealed_pairs(pin).values())
    assert len(pairs) == 2 and len({pair.preprocess_tag for pair in pairs}) == 2  # two prompts never share a record
    rows = [row for pair in pairs for row in pq.read_table(pair.artifact_path).to_pylist()]
    assert {row["prompt_id"] for row in rows} == {"caption.plain", "caption.detailed"}
    for row in rows:
        assert row["prompt_sha256"] == PROMPTS.get(row["prompt_id"]).sha256
        assert json.loads(row["decoding"]) == asdict(Decoding(max_new_tokens=4))
        assert row["token_count"] == len(row["token_ids"]) <= 4 and bool(row["text"]) != bool(row["empty_reason"])
        assert f"prompt={row['prompt_id']}@v1:" in row["preprocess_tag"] and "max_new=4" in row["preprocess_tag"]


def test_a_blip2_revision_without_query_tokens_is_refused(pins, loopback_hub, tmp_path):
    from awb_dagster.demo.tiny_captioners import build_tiny_captioner_files

    files = build_tiny_captioner_files("blip2-opt")
    del files["processor_config.json"]  # no num_query_tokens: transformers 5 would not place the image in the text
    legacy = replace(Registry.load().get("awb-demo/tiny-blip2-opt").instrument, id="awb-demo/tiny-blip2-no-query-tokens")
    loopback_hub.hub.add_commit(legacy.id, files, license="apache-2.0", pipeline_tag="image-text-to-text", library_name="transformers")
    pin = capture_pin(legacy, endpoint=loopback_hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(InstrumentError, match="needs num_query_tokens in processor_config.json"):
        Captioner(legacy, pin, PROMPTS.get("caption.plain"), device="cpu", cache_dir=tmp_path)
