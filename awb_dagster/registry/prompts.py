"""The prompt registry: prompts as data (``prompts.toml``), each with an id, a version, a
template and the template's sha256, plus the decoding parameters a text run declares.

Captioners, VLMs, CLIP/SigLIP zero-shot labels and GroundingDINO queries take their text from
here, and put :meth:`Prompt.tag` and :meth:`Decoding.tag` into their preprocess tag and records,
so two prompts (or two decodings) never share a record. The sha256 covers the template and the
label set, so a changed template is a new tag even if someone forgets to bump the version.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PROMPTS_PATH = Path(__file__).with_name("prompts.toml")
TASKS = ("caption", "ocr", "zero-shot", "detection")


class PromptError(ValueError):
    """A prompt file or entry is invalid, or a prompt is unknown; names the file and entry."""


@dataclass(frozen=True)
class Prompt:
    id: str
    version: int
    task: str
    template: str
    labels: tuple[str, ...] = ()
    notes: str = ""

    @property
    def sha256(self) -> str:
        payload = json.dumps({"template": self.template, "labels": list(self.labels)}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def tag(self) -> str:
        """``prompt=<id>@v<version>:<sha256[:12]>`` for preprocess tags."""
        return f"prompt={self.id}@v{self.version}:{self.sha256[:12]}"

    def texts(self) -> list[str]:
        """The texts a model sees: the template, or one per label for a ``{label}`` template."""
        if not self.labels:
            return [self.template]
        return [self.template.format(label=label) for label in self.labels]

    def record(self) -> dict[str, Any]:
        return {"prompt_id": self.id, "prompt_version": self.version, "prompt_sha256": self.sha256}


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters declared per run (also a run's config: every field has a default)."""

    method: Literal["greedy", "beam", "sample"] = "greedy"
    num_beams: int = 1
    max_new_tokens: int = 40
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam", "sample"):
            raise PromptError(f"decoding method must be greedy, beam or sample, got {self.method!r}")
        if self.num_beams < 1 or self.max_new_tokens < 1 or self.temperature <= 0:
            raise PromptError(f"num_beams and max_new_tokens must be >= 1 and temperature > 0: {self}")
        if self.method != "beam" and self.num_beams != 1:
            raise PromptError(f"num_beams = {self.num_beams} needs method = 'beam', got {self.method!r}")

    def tag(self) -> str:
        return (
            f"decode={self.method},beams={self.num_beams},max_new={self.max_new_tokens},"
            f"temp={self.temperature:g},seed={self.seed}"
        )

    def generate_kwargs(self) -> dict[str, Any]:
        """``model.generate`` arguments (transformers)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.method == "sample":
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs["do_sample"] = False
        return kwargs


@dataclass(frozen=True)
class PromptRegistry:
    path: Path
    prompts: dict[tuple[str, int], Prompt] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = PROMPTS_PATH) -> PromptRegistry:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PromptError(f"{path}: cannot read the prompt registry ({exc})") from exc
        prompts: dict[tuple[str, int], Prompt] = {}
        for index, entry in enumerate(raw.get("prompt", [])):
            prompt = _parse(entry, index, path)
            key = (prompt.id, prompt.version)
            if key in prompts:
                raise PromptError(
                    f"{path}: prompt {prompt.id} version {prompt.version} is declared twice; "
                    "a changed template needs a new version"
                )
            prompts[key] = prompt
        return cls(path, prompts)

    def get(self, prompt_id: str, version: int | None = None) -> Prompt:
        """The prompt ``prompt_id`` at ``version`` (default: its highest version)."""
        versions = sorted(v for (pid, v) in self.prompts if pid == prompt_id)
        if not versions or (version is not None and version not in versions):
            known = ", ".join(sorted({f"{pid}@v{v}" for pid, v in self.prompts}))
            raise PromptError(f"{self.path}: no prompt {prompt_id}" + (f" version {version}" if version else "") + f" (known: {known})")
        return self.prompts[(prompt_id, version if version is not None else versions[-1])]

    def for_task(self, task: str) -> list[Prompt]:
        return [p for p in self.prompts.values() if p.task == task]

    def verify(self, prompt_id: str, version: int, sha256: str) -> bool:
        """Whether a record's prompt sha256 is the registry's for that prompt (a blocking check)."""
        try:
            return self.get(prompt_id, version).sha256 == sha256
        except PromptError:
            return False


def _parse(entry: Any, index: int, path: Path) -> Prompt:
    where = f"{path}: prompt #{index + 1}"
    if not isinstance(entry, dict):
        raise PromptError(f"{where} is not a table")
    for name, kind in (("id", str), ("version", int), ("task", str), ("template", str)):
        if not isinstance(entry.get(name), kind) or entry.get(name) in ("", None):
            raise PromptError(f"{where} ({entry.get('id', '?')}): field {name!r} is missing or not a {kind.__name__}")
    if entry["task"] not in TASKS:
        raise PromptError(f"{where} ({entry['id']}): task {entry['task']!r} is not one of {', '.join(TASKS)}")
    unknown = set(entry) - {"id", "version", "task", "template", "labels", "notes"}
    if unknown:
        raise PromptError(f"{where} ({entry['id']}): unknown field(s) {', '.join(sorted(unknown))}")
    labels = entry.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) and label for label in labels):
        raise PromptError(f"{where} ({entry['id']}): labels must be a list of non-empty strings")
    if labels and "{label}" not in entry["template"]:
        raise PromptError(f"{where} ({entry['id']}): a prompt with labels needs '{{label}}' in its template")
    return Prompt(entry["id"], entry["version"], entry["task"], entry["template"], tuple(labels), entry.get("notes", ""))
