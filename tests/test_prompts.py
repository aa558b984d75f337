"""The prompt registry: prompts as data with a sha256, decoding parameters per run, and tags that
change whenever the text a model sees changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from awb_dagster.registry.prompts import Decoding, Prompt, PromptError, PromptRegistry


def write(tmp_path, body: str):
    path = tmp_path / "prompts.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_the_packaged_registry_loads_with_every_task():
    registry = PromptRegistry.load()
    assert {p.task for p in registry.prompts.values()} == {"caption", "ocr", "zero-shot", "detection"}
    zero_shot = registry.get("zero-shot.plate-kind")
    assert zero_shot.texts()[0] == "an engraved plate of a bird" and len(zero_shot.texts()) == len(zero_shot.labels)
    assert registry.verify(zero_shot.id, zero_shot.version, zero_shot.sha256)
    assert not registry.verify(zero_shot.id, zero_shot.version, "0" * 64)
    assert not registry.verify("no-such-prompt", 1, zero_shot.sha256)


def test_a_changed_template_is_a_new_tag():
    prompt = Prompt("caption.plain", 1, "caption", "a scientific illustration of")
    changed = replace(prompt, template="a scientific illustration of a")
    assert changed.sha256 != prompt.sha256 and changed.tag() != prompt.tag()
    relabelled = Prompt("z", 1, "zero-shot", "a plate of {label}", ("a bird",))
    assert replace(relabelled, labels=("a fish",)).tag() != relabelled.tag()  # the label set is hashed too
    assert prompt.tag().startswith("prompt=caption.plain@v1:")


def test_decoding_tag_and_generate_kwargs():
    greedy, beam = Decoding(), Decoding(method="beam", num_beams=4, max_new_tokens=20)
    assert greedy.tag() != beam.tag()
    assert beam.generate_kwargs() == {"max_new_tokens": 20, "num_beams": 4, "do_sample": False}
    assert Decoding(method="sample", temperature=0.7).generate_kwargs()["do_sample"] is True
    with pytest.raises(PromptError, match="needs method = 'beam'"):
        Decoding(num_beams=3)


def test_latest_version_and_unknown_prompt(tmp_path):
    path = write(tmp_path, '[[prompt]]\nid = "a"\nversion = 1\ntask = "caption"\ntemplate = "x"\n'
                           '[[prompt]]\nid = "a"\nversion = 2\ntask = "caption"\ntemplate = "y"\n')  # fmt: skip
    registry = PromptRegistry.load(path)
    assert registry.get("a").template == "y" and registry.get("a", 1).template == "x"
    with pytest.raises(PromptError, match=r"no prompt b .*known: a@v1, a@v2"):
        registry.get("b")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[prompt]]\nid = "a"\nversion = 1\ntask = "caption"\ntemplate = "x"\n' * 2, "declared twice"),
        ('[[prompt]]\nid = "a"\nversion = 1\ntask = "poetry"\ntemplate = "x"\n', "task 'poetry'"),
        ('[[prompt]]\nid = "a"\ntask = "caption"\ntemplate = "x"\n', "'version' is missing"),
        ('[[prompt]]\nid = "a"\nversion = 1\ntask = "zero-shot"\ntemplate = "x"\nlabels = ["b"]\n', "needs '{label}'"),
        ('[[prompt]]\nid = "a"\nversion = 1\ntask = "caption"\ntemplate = "x"\ncolour = 1\n', "unknown field"),
        ("[[prompt]\n", "cannot read"),
    ],
)
def test_invalid_entries_name_the_file_and_entry(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(PromptError, match=message) as info:
        PromptRegistry.load(path)
    assert str(path) in str(info.value)
