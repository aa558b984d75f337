"""Zero-shot labels (issue 11): per plate × CLIP/SigLIP pin, the probabilities of a registered label
set (a ``zero-shot`` prompt of ``registry/prompts.toml``), assets ``clip_zeroshot_labels`` and
``siglip_zeroshot_labels`` on the family's own pins partitions.

No new roster family: the text tower is part of the same checkpoint at the same sha as the image
tower, so the pin IS the instrument. The image side is the plate's SEALED ``<family>_embeddings``
record of that pin (read, never recomputed; ``embedding_ref`` names it, so lineage runs labels ->
embedding -> pin -> plate); the text side is the pin's text tower over the label set's texts, once
per step. Records are sealed under ``<pin>.zeroshot``, apart from the pin's embeddings; the preprocess
tag names the label set with its full sha256, the tokenization, the scoring and the embedding's tag,
so an edited template is a new tag and never shares a record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from awb_dagster.constants import GROUP_PROBES
from awb_dagster.engine.producer import PlateOutput, StepInputs
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.text_tower import ADAPTER_VERSION as TOWER_VERSION, TextTower
from awb_dagster.plates.catalog import Plate, PlateCatalog
from awb_dagster.provenance.checks import CheckOutcome
from awb_dagster.provenance.records import l2_normalize, record_fields
from awb_dagster.provenance.store import OpenRun, RunStore, SealedPair, verified_path
from awb_dagster.provenance.zeroshot import ZEROSHOT_CHECK_DESCRIPTIONS, check_zeroshot_pairs, zeroshot_pair_key, zeroshot_table
from awb_dagster.registry.prompts import Prompt, PromptError, PromptRegistry

CODE_VERSION = f"zeroshot-v1+{TOWER_VERSION}"
DEFAULT_LABEL_SET = "zero-shot.audubon-subject"


@dataclass(frozen=True)
class ZeroShotSettings:
    """The label set: a ``zero-shot`` prompt of the registry (``label_set_version`` 0: its newest version)."""

    label_set: str = DEFAULT_LABEL_SET
    label_set_version: int = 0


def label_set(settings: ZeroShotSettings, prompts: PromptRegistry | None = None) -> Prompt:
    """The registered label set the settings name; a clear error for an unknown or unfit prompt."""
    prompts = prompts or PromptRegistry.load()
    try:
        prompt = prompts.get(settings.label_set, settings.label_set_version or None)
    except PromptError as exc:
        raise InstrumentError(f"zero-shot labels: {exc}") from exc
    if prompt.task != "zero-shot" or not prompt.labels:
        raise InstrumentError(
            f"zero-shot labels: prompt {prompt.id}@v{prompt.version} in {prompts.path} is a {prompt.task!r} prompt "
            f"with {len(prompt.labels)} labels; a label set is a 'zero-shot' prompt with a labels list"
        )
    return prompt


def zeroshot_tag(prompt: Prompt, tower: TextTower, embedding_tag: str) -> str:
    """A record's preprocess tag: label set (full sha256), scoring, text tower, and the image embedding's tag."""
    return (
        f"label_set={prompt.id}@v{prompt.version}:{prompt.sha256};scoring={tower.spec.scoring};{tower.tag};"
        f"embedding_pin={tower.pin.key};embedding_tag=[{embedding_tag}]"
    )


@dataclass(frozen=True)
class UpstreamEmbedding:
    record_id: str
    preprocess_tag: str
    vector_l2: np.ndarray


class ZeroShotSession:
    def __init__(self, tower: TextTower, prompt: Prompt, store: RunStore, batch_size: int):
        self.instrument = tower
        self.prompt = prompt
        self.pin_key = tower.pin.key
        self.store_key = zeroshot_pair_key(self.pin_key)
        self.run_kind = f"{tower.instrument.family}-zeroshot-labels"
        self.code_version = CODE_VERSION
        self.batch_size = batch_size
        self._store = store
        self.texts = prompt.texts()
        self.token_counts = tower.token_counts(self.texts)
        self._label_vectors = l2_normalize(tower.encode(self.texts))  # once per step: [labels, dim]
        newest: dict[tuple[str, str], SealedPair] = {}
        for pair in sorted(store.sealed_pairs(self.pin_key).values(), key=lambda p: p.run_id):
            newest[(pair.plate_id, pair.plate_sha256)] = pair  # the newest sealed embedding per plate
        self._embeddings = newest

    def run_config(self) -> dict[str, Any]:
        return {**self.prompt.record(), "labels": list(self.prompt.labels), "texts": self.texts,
                "scoring": self.instrument.spec.scoring}  # fmt: skip

    def expected_tag(self, plate: Plate) -> str | None:
        pair = self._embeddings.get((plate.plate_id, plate.sha256))
        return None if pair is None else zeroshot_tag(self.prompt, self.instrument, pair.preprocess_tag)

    def prepare(self, plate: Plate) -> UpstreamEmbedding:
        pair = self._embeddings.get((plate.plate_id, plate.sha256))
        family = self.instrument.instrument.family
        if pair is None:
            raise InstrumentError(
                f"plate {plate.plate_id} has no sealed {family}_embeddings record of pin {self.pin_key}; "
                f"materialize {family}_embeddings for {self.pin_key} on it first"
            )
        path = verified_path(self._store, pair.run_id, pair.artifact, pair.artifact_sha256)
        table = pq.read_table(path, columns=["record_id", "vector_l2"], filters=[("record_id", "=", pair.record_ids[0])])
        vector = np.asarray(table.column("vector_l2")[0].as_py(), dtype=np.float32)
        return UpstreamEmbedding(pair.record_ids[0], pair.preprocess_tag, vector)

    def process(self, batch: Sequence[tuple[Plate, UpstreamEmbedding]], run: OpenRun) -> list[PlateOutput]:
        tower, prompt = self.instrument, self.prompt
        vectors = np.stack([upstream.vector_l2 for _, upstream in batch])
        if vectors.shape[1] != self._label_vectors.shape[1]:
            raise InstrumentError(
                f"{self.pin_key}: sealed image embeddings are {vectors.shape[1]}-d, the text tower's "
                f"{self._label_vectors.shape[1]}-d; they are not one model's space"
            )
        cosines = vectors @ self._label_vectors.T
        logits = tower.logit_scale * cosines.astype(np.float64) + tower.logit_bias
        probabilities = tower.probabilities(cosines)
        rows, tags = [], []
        for plate, upstream in batch:
            tag = zeroshot_tag(prompt, tower, upstream.preprocess_tag)
            fields = record_fields(
                plate_id=plate.plate_id, plate_sha256=plate.sha256, model_id=tower.instrument.id, model_sha=tower.pin.sha,
                pin_key=self.pin_key, preprocess_tag=tag, run_id=run.run_id, scope="plate",
            )  # fmt: skip
            rows.append({
                **fields, "label_set_id": prompt.id, "label_set_version": prompt.version,
                "label_set_sha256": prompt.sha256, "labels": list(prompt.labels), "texts": self.texts,
                "token_counts": self.token_counts, "scoring": tower.spec.scoring, "logit_scale": tower.logit_scale,
                "logit_bias": tower.logit_bias, "embedding_ref": upstream.record_id, "embedding_pin": self.pin_key,
            })  # fmt: skip
            tags.append(tag)
        artifact = run.write_table("zeroshot", zeroshot_table(rows, cosines, logits, probabilities))
        outputs = []
        for (plate, _), tag, row, probs in zip(batch, tags, rows, probabilities):
            top = int(np.argmax(probs))
            facts = {"top_label": prompt.labels[top], "top_probability": float(probs[top])}
            outputs.append(PlateOutput(plate, tag, [row["record_id"]], artifact, facts=facts))
        return outputs

    def partition_metadata(self, pair: SealedPair, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "label_set": f"{self.prompt.id}@v{self.prompt.version}",
            "label_set_sha256": self.prompt.sha256,
            "scoring": self.instrument.spec.scoring,
        }
        if facts:
            metadata.update(top_label=facts["top_label"], top_probability=round(facts["top_probability"], 6))
        return metadata


class ZeroShotProducer:
    """Zero-shot labels of one text-tower family (``clip``, ``siglip``): asset ``<family>_zeroshot_labels``."""

    group = GROUP_PROBES
    code_version = CODE_VERSION
    settings_type = ZeroShotSettings
    check_descriptions = ZEROSHOT_CHECK_DESCRIPTIONS
    license_gated = False  # the pin's own license, as for its embeddings

    def __init__(self, family: str):
        self.family = family
        self.asset_name = f"{family}_zeroshot_labels"
        self.pins_dimension = f"{family}_pins"
        self.upstream = (f"{family}_embeddings",)
        scoring = "softmax over the labels of logit_scale × cosine" if family == "clip" else (
            "sigmoid of logit_scale × cosine + logit_bias per label (they need not sum to 1)")
        self.description = (
            f"Zero-shot labels per plate × {family} pin: a registered label set (prompts.toml, its sha256 in every "
            f"record) read by the pin's text tower against the plate's sealed {family}_embeddings record (never "
            f"recomputed; embedding_ref names it). Probabilities: {scoring}. A weak, measured signal, never a verdict."
        )

    def open(self, pin_key: str, settings: ZeroShotSettings, inputs: StepInputs) -> ZeroShotSession:
        prompt = label_set(settings)
        tower = inputs.instruments.text_tower(pin_key, self.family)
        return ZeroShotSession(tower, prompt, inputs.store, inputs.torch_settings.batch_size)

    def checks(
        self, store: RunStore, catalog: PlateCatalog, pairs: Sequence[SealedPair], sessions: Mapping[str, Any]
    ) -> dict[str, CheckOutcome]:
        return check_zeroshot_pairs(store, pairs)


ZEROSHOT_PRODUCERS = (ZeroShotProducer("clip"), ZeroShotProducer("siglip"))
