"""Captioners (seed 10.2): tiny random-weight checkpoints of BLIP, BLIP-2 (OPT and FLAN-T5) and
Qwen2-VL, served by the loopback hub, pinned and loaded at their sha; the caption contract; memory
refusal before loading, in the adapter and in a Dagster run started by `awb run`; a changed prompt
or decoding is a new tag; blip_captions end to end."""

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
from awb_dagster.cli import main
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
BLIP2_OPT = "Salesforce/blip2-opt-2.7b"  # the real roster row: min_memory_gb = 10 (16-bit weights)
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


@pytest.fixture(scope="module")
def caption_home(pins, loopback_hub, tmp_path_factory):
    """One plate; the tiny BLIP, and the real BLIP-2 OPT 2.7b row pinned at a loopback revision that
    holds the tiny BLIP-2 OPT's files (never loaded: its row's memory need refuses it first)."""
    from awb_dagster.demo.tiny_captioners import build_tiny_captioner_files
    from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR

    loopback_hub.hub.add_commit(BLIP2_OPT, build_tiny_captioner_files("blip2-opt"), license="mit",
                                pipeline_tag="image-text-to-text", library_name="transformers")  # fmt: skip
    return make_demo_home(loopback_hub, tmp_path_factory, "captions", [BLIP, BLIP2_OPT],
                          plate_files=[SAMPLE_PLATES_DIR / "audubon_p026_carolina-parrot.jpg"])  # fmt: skip


def test_blip_captions_end_to_end(caption_home):
    home = caption_home
    pin = home.pins[BLIP]
    asset = "blip_captions"
    runs = [
        materialize_pin_ranges(home.defs, home.instance, job_name(asset), asset, config, pin, None)
        for config in ({"max_new_tokens": 4}, {"max_new_tokens": 4, "prompt_id": "caption.detailed"})
    ]
    assert all(run.success for (run,) in runs)
    pairs = [pair for pair in home.store.sealed_pairs(pin).values() if "max_new=4" in pair.preprocess_tag]
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


def test_memory_refusal_fails_the_dagster_run_of_awb_run_before_loading(caption_home, monkeypatch, capsys):
    """`awb run --family blip2` on a device (simulated: the memory query answers 8 GiB) below the
    row's need: the Dagster run fails with the need, dtype, device and its memory in its event log
    and in awb's output; no weights were loaded and nothing was sealed."""
    import dagster as dg

    loads = []
    monkeypatch.setattr(captioner_module, "load_pinned", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    monkeypatch.setattr(memory, "device_memory", lambda device: memory.DeviceMemory(f"{device} (simulated)", 7.5, 8.0))
    pin = caption_home.pins[BLIP2_OPT]
    code = main(["run", "--family", "blip2", "--pin", pin, "--device", "cpu", "--home", str(caption_home.paths.root)])
    out = capsys.readouterr()
    need = (f"{BLIP2_OPT} needs 20 GiB of free device memory at float32 (roster min_memory_gb 10 for 16-bit weights) "
            "but device cpu (simulated) has 7.5 GiB free of 8.0 GiB; nothing was loaded")  # fmt: skip
    assert code == 1 and f"FAILED {pin}: 1 plates, dagster run " in out.out
    assert f"  why: awb_dagster.instruments.common.InstrumentError: {need}" in out.out  # awb's own line says why
    run_id = out.out.split("dagster run ")[-1].split()[0]
    assert caption_home.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    failures = [record.dagster_event for record in caption_home.instance.all_logs(run_id)
                if record.dagster_event and record.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE]  # fmt: skip
    assert len(failures) == 1 and need in str(failures[0].step_failure_data.error.to_string())
    assert loads == []  # the refusal came before any weights were read
    assert caption_home.store.sealed_pairs(pin) == {}


def test_awb_run_materializes_a_caption_family(caption_home, capsys):
    """`awb run --family blip` runs blip_captions through its Dagster job with the default settings
    (the family's default prompt, greedy, 40 new tokens) and seals the plate's caption."""
    pin = caption_home.pins[BLIP]
    assert main(["run", "--family", "blip", "--device", "cpu", "--home", str(caption_home.paths.root)]) == 0
    assert f"ok {pin}: 1 plates, dagster run " in capsys.readouterr().out
    (pair,) = [p for p in caption_home.store.sealed_pairs(pin).values() if "max_new=40" in p.preprocess_tag]
    (row,) = pq.read_table(pair.artifact_path).to_pylist()
    assert row["prompt_id"] == "caption.plain" and json.loads(row["decoding"]) == asdict(Decoding(max_new_tokens=40))
    assert row["plate_id"] == next(iter(caption_home.catalog.plates)) and row["record_id"] in pair.record_ids
