"""The embedding instrument on its own: loading at the pin, preprocessing paths, tags, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from awb_dagster.demo.checkpoints import DEMO_REPOS
from awb_dagster.demo.tiny_captioners import CAPTION_DEMO_REPOS
from awb_dagster.demo.tiny_florence import FLORENCE_DEMO_REPO
from awb_dagster.instruments.common import InstrumentError
from awb_dagster.instruments.embedding import ImageEmbedder
from awb_dagster.instruments.streaming import prefetch_batches
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR, PlateCatalog
from awb_dagster.registry.model import Registry
from awb_dagster.registry.pins import capture_pin

PLATES = sorted(p for p in SAMPLE_PLATES_DIR.iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module")
def clip(loopback_hub):
    instrument = Registry.load().get("awb-demo/tiny-clip").instrument
    return instrument, capture_pin(instrument, endpoint=loopback_hub.endpoint)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    catalog = PlateCatalog(tmp_path_factory.mktemp("catalog") / "catalog.json")
    catalog.scan([SAMPLE_PLATES_DIR])
    return catalog


def _embed(embedder: ImageEmbedder, catalog: PlateCatalog) -> np.ndarray:
    prepared = [embedder.load_plate(p.path, p.sha256, max_pixels=10**8) for p in catalog.plates.values()]
    return embedder.embed(embedder.pixel_values(prepared))


def test_batched_processor_path_matches_worker_path(clip, catalog):
    workers = ImageEmbedder(*clip, device="cpu")
    batched = ImageEmbedder(*clip, device="cpu", preprocess_on_device=True)
    assert workers.preprocess_tag == batched.preprocess_tag  # same library, same device
    np.testing.assert_allclose(_embed(workers, catalog), _embed(batched, catalog), rtol=1e-4, atol=1e-4)


def test_every_pixel_changing_choice_changes_the_tag(clip, catalog):
    draft = ImageEmbedder(*clip, device="cpu")
    full = ImageEmbedder(*clip, device="cpu", jpeg_draft=False)
    assert "draft=jpeg-dct-min-side-64" in draft.preprocess_tag
    assert "draft=none" in full.preprocess_tag
    for part in ("dec=PIL-", "color=rgb-v1", "proc=CLIPImageProcessor", "resize=torchvision-",
                 "bicubic", "crop=center:height=32,width=32", "rescale=", "norm=mean("):  # fmt: skip
        assert part in draft.preprocess_tag
    # Small plates decode the same either way; large JPEGs differ a little, never a lot.
    a, b = _embed(draft, catalog), _embed(full, catalog)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos > 0.95).all()


def test_declared_dim_is_asserted(clip):
    instrument, pin = clip
    wrong = type(pin)(**{**pin.__dict__, "output_dim": 99})
    with pytest.raises(InstrumentError, match="outputs 32-d vectors but the pin declares 99"):
        ImageEmbedder(instrument, wrong, device="cpu")


def test_pin_for_another_model_is_refused(clip):
    instrument, pin = clip
    other = Registry.load().get("awb-demo/tiny-dinov2").instrument
    with pytest.raises(InstrumentError, match="is for awb-demo/tiny-clip"):
        ImageEmbedder(other, pin, device="cpu")


def test_prefetch_keeps_order_bounds_memory_and_reports_errors():
    in_flight = []

    def prepare(i: int) -> int:
        in_flight.append(i)
        if i == 5:
            raise ValueError("bad plate 5")
        return i * 10

    seen = []
    for batch in prefetch_batches(range(20), prepare, batch_size=4, workers=3, prefetch_batches=1):
        assert len(in_flight) <= len(seen) + len(batch) + 8  # window = (1 + 1) * 4
        seen.extend(batch)
    assert [slot.item for slot in seen] == list(range(20))
    assert [slot.value for slot in seen if slot.item != 5] == [i * 10 for i in range(20) if i != 5]
    (bad,) = [slot for slot in seen if slot.error is not None]
    assert bad.item == 5 and "bad plate 5" in str(bad.error)


def test_demo_repos_are_the_registry_demo_instruments():
    registry = Registry.load()
    assert {e.instrument.id for e in registry.entries if e.instrument.demo} == set(DEMO_REPOS) | set(CAPTION_DEMO_REPOS) | {FLORENCE_DEMO_REPO}
