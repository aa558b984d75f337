"""`awb search` in `awb demo`: one text ranked against the tiny CLIP's sealed plate embeddings by its
own text tower (random weights: the ranking carries no meaning, the chain does). A home whose tiny
CLIP was published before it carried a tokenizer is skipped with one line saying how to renew it."""

from __future__ import annotations

import time
from collections.abc import Callable

from awb_dagster.paths import HomePaths
from awb_dagster.provenance.report import text_table

DEMO_CLIP = "awb-demo/tiny-clip"
DEMO_QUERY = "a plate of a bird"


def search_summary(paths: HomePaths, registry, say: Callable[[str], None]) -> bool:
    """Run the search once on the demo's tiny CLIP pin; print the top hits. False on a failure."""
    from awb_dagster.atlas.search import hit_rows, search_home
    from awb_dagster.instruments.common import InstrumentError

    pin = registry.get(DEMO_CLIP).active_pin
    if pin is None:
        say(f"FAILED: search: {DEMO_CLIP} is not pinned")
        return False
    started = time.perf_counter()
    try:
        result = search_home(paths, DEMO_QUERY, pin_key=pin.key, k=3)
    except InstrumentError as exc:
        if "cannot load its tokenizer" not in str(exc):
            raise
        say(f"\nskipping search: {pin.key} has no tokenizer in this home (an older tiny CLIP); "
            f"`awb demo publish {DEMO_CLIP} --home {paths.root}` publishes and pins one that has")  # fmt: skip
        return True
    say(f"\nawb search {DEMO_QUERY!r} --pin {pin.key} ({time.perf_counter() - started:.1f} s, {result.plates} plates, "
        f"sealed embeddings, cosine):")  # fmt: skip
    say(text_table(hit_rows(result), ["rank", "plate_id", "score", "record_id"]))
    return True
