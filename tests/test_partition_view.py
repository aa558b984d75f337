"""What a person sees on a partition (issue 10, item 10): one sentence saying which run computed
its records and which reused them, a plate thumbnail, the preprocess tag split into fields, and
a run tag that forces recomputation (a UI backfill takes tags, not run config). Tiny CLIP on two
sample plates."""

from __future__ import annotations

import base64
import io
import re

import dagster as dg
import pytest
from PIL import Image

from awb_dagster.assets.factory import job_name
from awb_dagster.constants import PIN_DIMENSION, PLATE_DIMENSION
from awb_dagster.engine.metadata import FORCE_TAG
from awb_dagster.engine.plate_view import preprocess_fields
from awb_dagster.plates.thumbnails import THUMBNAIL_SIDE
from awb_dagster.plates.catalog import SAMPLE_PLATES_DIR
from awb_dagster.runner import materialize_family
from demo_homes import make_demo_home

ASSET = "clip_embeddings"
PLATES = ["audubon_p421_brown-pelican.jpg", "AWKWARD_rgba-transparent_haeckel_radiolarian.png"]


@pytest.fixture(scope="module")
def clip_home(loopback_hub, tmp_path_factory):
    files = [SAMPLE_PLATES_DIR / name for name in PLATES]
    return make_demo_home(loopback_hub, tmp_path_factory, "view", ["awb-demo/tiny-clip"], plate_files=files)


def _latest(home, plate_id: str) -> dict:
    partition = str(dg.MultiPartitionKey({PIN_DIMENSION: home.pin_key, PLATE_DIMENSION: plate_id}))
    event = home.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(ASSET), asset_partitions=[partition]), limit=1
    ).records[0]
    return {**event.asset_materialization.metadata, "materialized_in": event.run_id}


def _force_by_tag(home, plate_id: str) -> dg.ExecuteInProcessResult:
    key = str(dg.MultiPartitionKey({PIN_DIMENSION: home.pin_key, PLATE_DIMENSION: plate_id}))
    return home.defs.resolve_job_def(job_name(ASSET)).execute_in_process(
        instance=home.instance,
        tags={"dagster/asset_partition_range_start": key, "dagster/asset_partition_range_end": key, FORCE_TAG: "true"},
    )


def test_computed_then_reused_then_forced_by_tag(clip_home):
    home, plate_ids = clip_home, list(clip_home.catalog.plates)
    (first,) = materialize_family(home.defs, home.instance, "clip", home.pin_key)
    computed = _latest(home, plate_ids[0])
    assert computed["computed_in"].value.startswith(f"Computed in Dagster run `{first.dagster_run_id}` (sealed run `")
    assert "the run that materialized this partition" in computed["computed_in"].value

    (second,) = materialize_family(home.defs, home.instance, "clip", home.pin_key)
    reused = _latest(home, plate_ids[0])
    assert reused["materialized_in"] == second.dagster_run_id and reused["dagster_run_id"].value == first.dagster_run_id
    assert reused["computed_in"].value == (
        f"Computed in Dagster run `{first.dagster_run_id}` (sealed run `{computed['run_id'].value}`); reused by "
        f"Dagster run `{second.dagster_run_id}`, which recomputed nothing. To recompute, launch with the run "
        f"config `force: true` or the tag `{FORCE_TAG}=true`."
    )

    forced = _force_by_tag(home, plate_ids[0])
    assert forced.success
    recomputed = _latest(home, plate_ids[0])
    assert recomputed["status"].value == "computed" and recomputed["dagster_run_id"].value == forced.run_id
    assert recomputed["run_id"].value != computed["run_id"].value


def test_thumbnail_and_preprocess_fields(clip_home):
    home = clip_home
    materialize_family(home.defs, home.instance, "clip", home.pin_key)
    for plate_id, plate in home.catalog.plates.items():
        metadata = _latest(home, plate_id)
        match = re.fullmatch(rf"!\[plate {plate_id}\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", metadata["plate"].value)
        assert match, metadata["plate"].value[:200]
        png = base64.b64decode(match.group(1))
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and max(image.size) == min(THUMBNAIL_SIDE, max(plate.width, plate.height))
        assert len(png) < 16_000  # a few KB in the event log per partition
        rows = [record.data for record in metadata["preprocess"].value.records]
        assert ";".join(f"{r['field']}={r['value']}" for r in rows) == metadata["preprocess_tag"].value
        assert {"dec", "resize", "norm"} <= {r["field"] for r in rows}


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("dec=pil;crop=none", ({"field": "dec", "value": "pil"}, {"field": "crop", "value": "none"})),
        ("region=segment:bbox-pad=0.1", ({"field": "region", "value": "segment:bbox-pad=0.1"},)),
        ("legacy", ({"field": "", "value": "legacy"},)),
    ],
)
def test_preprocess_fields_split_on_the_first_equals(tag, rows):
    assert preprocess_fields(tag) == rows
