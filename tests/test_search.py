"""Text-to-plate search and zero-shot labels (issue 11) on the tiny CLIP and SigLIP: `awb search` ranks
the plates by the pinned text tower against the SEALED image embeddings (made by `awb run`, through
Dagster) and each hit's record id resolves through lineage; the zero-shot label asset reads those
records, names them, and a changed label template is a new tag."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from awb_dagster.assets.factory import job_name
from awb_dagster.cli import main
from awb_dagster.provenance.lineage import lineage
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin
from awb_dagster.registry.prompts import PromptRegistry
from awb_dagster.runner import materialize_family, materialize_pin_ranges
from demo_homes import DemoHome, make_demo_home

CLIP = "awb-demo/tiny-clip"
SIGLIP = "awb-demo/tiny-siglip"  # its head carries spiece.model (SiglipTokenizer), as google/siglip-* do


@pytest.fixture(scope="module")
def clip_home(loopback_hub, tmp_path_factory) -> DemoHome:
    home = make_demo_home(loopback_hub, tmp_path_factory, "search", [CLIP, SIGLIP])
    # As `awb pin` and `awb demo` do: every file of the pin in the home's cache (the tokenizer too).
    for repo in (CLIP, SIGLIP):
        capture_pin(Registry.load(lock_path=home.paths.lock).get(repo).instrument, endpoint=loopback_hub.endpoint,
                    cache_dir=home.paths.hf_cache)  # fmt: skip
    return home


def search(capsys, home: DemoHome, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["search", *args, "--home", str(home.paths.root)])
    except SystemExit as exc:  # user errors exit 2 with one line
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_without_sealed_embeddings_or_pin_names_what_to_do(clip_home, capsys):
    code, _, err = search(capsys, clip_home, "a bird")
    assert code == 2
    assert f"no sealed clip_embeddings records of pin {clip_home.pins[CLIP]}" in err
    assert f"awb run --family clip --pin {clip_home.pins[CLIP]}" in err
    code, _, err = search(capsys, clip_home, "a bird", "--pin", "nope@0123456789")
    assert code == 2 and "is not in the lock file" in err


@pytest.fixture(scope="module")
def embedded(clip_home):
    runs = materialize_family(clip_home.defs, clip_home.instance, "clip", clip_home.pins[CLIP])
    assert runs and all(r.success for r in runs)
    return {r for p in clip_home.store.sealed_pairs(clip_home.pins[CLIP]).values() for r in p.record_ids}


def test_search_ranks_plates_by_sealed_records_that_resolve_through_lineage(clip_home, embedded, capsys):
    code, out, err = search(capsys, clip_home, "a plate of a bird", "--k", "3")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    scores = [float(row[2]) for row in rows]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    for _, plate_id, _, record_id in rows:
        assert record_id in embedded  # a sealed record, not a recomputed vector
        info = lineage(clip_home.store, record_id)
        assert info["plate"]["plate_id"] == plate_id and info["model"]["pin_key"] == clip_home.pins[CLIP]
    assert f"awb lineage {rows[0][3]}" in out and "pad=longest" in out
    # The same text through the tower by hand: the printed score is its cosine with the sealed vector.
    from awb_dagster.atlas.search import search_home

    result = search_home(clip_home.paths, "a plate of a bird", k=len(clip_home.catalog.plates))
    assert result.plates == len(clip_home.catalog.plates) and len(result.hits) == result.plates
    assert [h.record_id for h in result.hits[:3]] == [row[3] for row in rows]


def test_siglip_search_after_awb_run_scores_by_the_models_own_text_embedding(clip_home, capsys):
    """The tiny SigLIP embedded by `awb run` (its Dagster job), then `awb search --pin`: each printed
    score is the cosine of a sealed image vector with SiglipModel's own text embedding (its forward
    pass, the text padded to max_length as the model card does), the hits follow that order, and
    each record id resolves through lineage to its plate and the pin."""
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoTokenizer, SiglipModel

    pin, root, text = clip_home.pins[SIGLIP], str(clip_home.paths.root), "a heron wading in water"
    assert main(["run", "--family", "siglip", "--pin", pin, "--home", root]) == 0
    assert f"ok {pin}: {len(clip_home.catalog.plates)} plates, dagster run" in capsys.readouterr().out
    code, out, err = search(capsys, clip_home, text, "--pin", pin, "--k", str(len(clip_home.catalog.plates)))
    assert code == 0, err
    assert "tok=SiglipTokenizer;pad=max_length:16" in out and f"{pin} ({SIGLIP})" in out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [row[1] for row in rows] and sorted(row[1] for row in rows) == sorted(clip_home.catalog.plates)

    sealed = {}  # record id -> (plate id, raw sealed image vector)
    for pair in clip_home.store.sealed_pairs(pin).values():
        for row in pq.read_table(pair.artifact_path, columns=["record_id", "plate_id", "vector"]).to_pylist():
            sealed[row["record_id"]] = (row["plate_id"], np.asarray(row["vector"], dtype=np.float64))
    sha = PinLock.load(clip_home.paths.lock).find_key(pin).sha
    folder = snapshot_download(SIGLIP, revision=sha, cache_dir=clip_home.paths.hf_cache, local_files_only=True)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), SiglipModel.from_pretrained(folder).eval()
    tokens = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    assert set(tokens) == {"input_ids"}  # as google/siglip-* tokenizers: no attention mask
    with torch.inference_mode():
        text_embed = model(**tokens, pixel_values=torch.zeros(1, 3, 32, 32)).text_embeds[0].double().numpy()
    expected = []
    for rank, plate_id, score, record_id in rows:
        sealed_plate, vector = sealed[record_id]  # a sealed record, not a recomputed vector
        cosine = float(vector @ text_embed / np.linalg.norm(vector) / np.linalg.norm(text_embed))
        assert sealed_plate == plate_id and abs(float(score) - cosine) < 2e-4, (rank, plate_id, score, cosine)
        expected.append(cosine)
        info = lineage(clip_home.store, record_id)
        assert info["plate"]["plate_id"] == plate_id and info["model"]["pin_key"] == pin
    assert all(a >= b - 1e-5 for a, b in zip(expected, expected[1:]))  # ranked by that cosine, best first


def test_a_changed_label_template_is_a_new_tag_and_fails_the_sha_check(tmp_path):
    from awb_dagster.producers.zeroshot import DEFAULT_LABEL_SET, zeroshot_tag

    prompts = PromptRegistry.load()
    prompt = prompts.get(DEFAULT_LABEL_SET)
    edited = dataclasses.replace(prompt, template=prompt.template.replace("{label}", "the {label}"))
    assert edited.sha256 != prompt.sha256 and edited.tag() != prompt.tag()

    class Tower:  # the tag's text-tower part, without loading one
        spec = type("Spec", (), {"scoring": "softmax"})
        tag = "text=CLIPModel;tok=CLIPTokenizer;pad=longest:16"
        pin = type("Pin", (), {"key": "demo-tiny-clip@0123456789"})

    tags = {zeroshot_tag(p, Tower, "embedding-tag") for p in (prompt, edited)}
    assert len(tags) == 2 and all(f"label_set={DEFAULT_LABEL_SET}@v1:" in tag for tag in tags)
    assert prompts.verify(prompt.id, prompt.version, prompt.sha256)
    assert not prompts.verify(prompt.id, prompt.version, edited.sha256)


def test_zero_shot_labels_read_the_sealed_embeddings_through_dagster(clip_home, embedded):
    from awb_dagster.producers.zeroshot import DEFAULT_LABEL_SET
    from awb_dagster.provenance.zeroshot import check_zeroshot_pairs, zeroshot_pair_key

    pin = clip_home.pins[CLIP]
    runs = materialize_pin_ranges(clip_home.defs, clip_home.instance, job_name("clip_zeroshot_labels"),
                                  "clip_zeroshot_labels", {}, pin)  # fmt: skip
    assert runs and all(r.success for r in runs)
    pairs = list(clip_home.store.sealed_pairs(zeroshot_pair_key(pin)).values())
    assert {p.plate_id for p in pairs} == set(clip_home.catalog.plates)
    prompt = PromptRegistry.load().get(DEFAULT_LABEL_SET)
    rows = pq.read_table(pairs[0].artifact_path).to_pylist()
    for row in rows:
        assert row["embedding_ref"] in embedded and row["embedding_pin"] == pin
        assert row["labels"] == list(prompt.labels) and row["label_set_sha256"] == prompt.sha256
        assert row["scoring"] == "softmax" and abs(sum(row["probabilities"]) - 1.0) < 1e-4
        assert prompt.sha256 in row["preprocess_tag"] and row["top_label"] in prompt.labels
        np.testing.assert_allclose(  # softmax over logit_scale × cosine, the model's own scale
            row["probabilities"], np.exp(row["logits"]) / np.exp(row["logits"]).sum(), rtol=1e-4, atol=1e-6
        )
    outcomes = check_zeroshot_pairs(clip_home.store, pairs)
    assert all(o.passed and o.checked == len(pairs) for o in outcomes.values())
    info = lineage(clip_home.store, rows[0]["record_id"])
    assert info["embedding"]["record_id"] == rows[0]["embedding_ref"] and info["model"]["pin_key"] == pin
    # A second materialization reuses the sealed records (same label set: same tag).
    again = materialize_pin_ranges(clip_home.defs, clip_home.instance, job_name("clip_zeroshot_labels"),
                                   "clip_zeroshot_labels", {}, pin)  # fmt: skip
    assert all(r.success for r in again)
    assert {p.run_id for p in clip_home.store.sealed_pairs(zeroshot_pair_key(pin)).values()} == {p.run_id for p in pairs}


def _tower(family: str, loopback_hub, tmp_path):
    from awb_dagster.instruments.text_tower import TextTower

    instrument = Registry.load().get(f"awb-demo/tiny-{family}").instrument
    pin = capture_pin(instrument, endpoint=loopback_hub.endpoint, cache_dir=tmp_path / "hf")
    return TextTower(instrument, pin, device="cpu", cache_dir=tmp_path / "hf", local_files_only=True)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_zero_shot_probabilities_are_the_models_own(family, loopback_hub, tmp_path):
    """Cosines of the family's image embedding (what the sealed records hold) with the tower's text
    vectors give the probabilities of the model's own forward pass: CLIP's softmax over
    logits_per_image, SigLIP's sigmoid; SigLIP's texts are padded to max_length."""
    import torch

    tower = _tower(family, loopback_hub, tmp_path)
    texts = PromptRegistry.load().get("zero-shot.audubon-subject").texts()[:4]
    inputs = tower.tokenize(texts)
    if family == "siglip":
        assert inputs["input_ids"].shape == (len(texts), tower.max_length) and "pad=max_length:16" in tower.tag
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        image = tower.model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        expected = tower.model(pixel_values=pixels, **inputs).logits_per_image.double()
    expected = expected.softmax(dim=1) if family == "clip" else expected.sigmoid()
    from awb_dagster.provenance.records import l2_normalize

    cosines = l2_normalize(image) @ l2_normalize(tower.encode(texts)).T
    np.testing.assert_allclose(tower.probabilities(cosines), expected.numpy(), rtol=1e-4, atol=1e-6)


def test_a_pin_without_tokenizer_files_is_refused_not_read_as_unknown_tokens(loopback_hub, tmp_path):
    """transformers would build an empty-vocabulary CLIPTokenizer from the config alone: the tiny
    CLIP's first revision (image side only) must fail naming the missing tokenizer."""
    from awb_dagster.instruments.common import InstrumentError
    from awb_dagster.instruments.text_tower import TextTower

    instrument = Registry.load().get(CLIP).instrument
    first = next(sha for sha, c in loopback_hub.hub.read_repo(CLIP)["commits"].items() if sha != loopback_hub.shas[CLIP])
    pin = capture_pin(instrument, revision=first, endpoint=loopback_hub.endpoint, cache_dir=tmp_path)
    assert "tokenizer.json" not in pin.files
    with pytest.raises(InstrumentError, match="cannot load its tokenizer"):
        TextTower(instrument, pin, device="cpu", cache_dir=tmp_path, local_files_only=True)
    empty = dataclasses.replace(pin, files={})  # a pin taken before pins listed their files
    with pytest.raises(InstrumentError, match="special or unknown tokens"):
        TextTower(instrument, empty, device="cpu", cache_dir=tmp_path, local_files_only=True)
