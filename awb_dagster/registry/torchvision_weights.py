"""torchvision weights (``source = "torchvision"``, seed section 11), pinned from a local file.

A torchvision weight is pinned as library + version + weight enum + the sha256 of its weight file.
Nothing downloads: :func:`capture_torchvision_pin` takes a file the user already has, requires the
name torchvision publishes for that enum (``resnet50-11ad3fa6.pth``), requires the file's sha256 to
start with the hash prefix in that name (torch.hub's own check), and copies it into the home as
``<weights>/<sha256>/<name>``, where :func:`torchvision_weight_file` finds and re-verifies it.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from awb_dagster.hashing import sha256_file
from awb_dagster.registry.hub_client import NotPinnableError, PinError
from awb_dagster.registry.lock import Pin
from awb_dagster.registry.roster import Instrument

TORCHVISION_SOURCE = "torchvision"
# torch.hub names a published weight file ``<stem>-<first hex digits of its sha256>.<ext>``.
_PUBLISHED_NAME = re.compile(r"^(?P<stem>[\w.]+?)-(?P<prefix>[0-9a-f]{8,64})\.(?:pth|pt)$")
# Weight ids of the demo's tiny checkpoints: random weights in torchvision architectures, published
# by awb_dagster.demo.checkpoints under torch.hub's naming rule with this stem (no enum exists).
DEMO_WEIGHT_STEMS = {"awb_demo.TINY_CONVNEXT": "tiny_convnext"}


class WeightFileNameError(PinError):
    """The file is not named as torchvision publishes the instrument's weights."""


class WeightHashPrefixError(PinError):
    """The file's sha256 does not start with the hash prefix its name carries."""


def installed_torchvision_version() -> str:
    """The public version of the installed torchvision (``0.29.1``, without a ``+cu130`` tag)."""
    import torchvision

    return torchvision.__version__.split("+", 1)[0]


def published_file_name(instrument: Instrument) -> str | None:
    """The file name torchvision publishes for the instrument's weight enum; None for the demo's
    tiny checkpoints, whose name is ``<stem>-<sha256 prefix>.pth`` (see :data:`DEMO_WEIGHT_STEMS`)."""
    if instrument.weight_id in DEMO_WEIGHT_STEMS:
        return None
    from torchvision.models import get_weight

    try:
        weights = get_weight(str(instrument.weight_id))
    except (ValueError, AttributeError, KeyError) as exc:
        raise PinError(
            f"{instrument.id}: torchvision {installed_torchvision_version()} has no weight enum "
            f"{instrument.weight_id!r} ({exc}); fix weight_id in roster.toml"
        ) from exc
    return weights.url.rsplit("/", 1)[-1]


def check_weight_file(instrument: Instrument, source: Path) -> tuple[str, str]:
    """(file name, sha256) of ``source`` once it is shown to be the instrument's weight file: named
    as published and hashing to a sha256 that starts with the prefix in that name."""
    if not source.is_file():
        raise PinError(f"{source}: no such file; give the path of the downloaded {instrument.weight_id} weights")
    name = source.name
    published = published_file_name(instrument)
    match = _PUBLISHED_NAME.match(name)
    if published is not None and name != published:
        raise WeightFileNameError(
            f"{source}: {instrument.id} ({instrument.weight_id}) is published as {published}, not {name}. "
            "Give the file under its published name (a renamed file cannot be checked against the "
            "hash prefix torchvision publishes in the name)."
        )
    stem = DEMO_WEIGHT_STEMS.get(str(instrument.weight_id))
    if match is None or (stem is not None and match["stem"] != stem):
        expected = f"{stem}-<sha256 prefix>.pth" if stem else "<name>-<sha256 prefix>.pth"
        raise WeightFileNameError(f"{source}: {instrument.id} weight files are named {expected}, not {name}")
    sha256 = sha256_file(source)
    if not sha256.startswith(match["prefix"]):
        raise WeightHashPrefixError(
            f"{source}: sha256 {sha256} does not start with {match['prefix']}, the hash torchvision "
            f"publishes in the name {name}: it is not the published {instrument.weight_id} file "
            "(truncated or different weights). Download it again from the weight enum's url."
        )
    return name, sha256


def capture_torchvision_pin(instrument: Instrument, source: Path, *, weights_dir: Path) -> Pin:
    """Pin a ``source = "torchvision"`` instrument from the local weight file ``source``, copied into
    ``weights_dir``. The installed torchvision must be the version roster.toml declares."""
    if instrument.source != TORCHVISION_SOURCE:
        raise NotPinnableError(f"{instrument.id} ({instrument.key}) is not a torchvision weight; pin it without --file")
    installed = installed_torchvision_version()
    if installed != instrument.library_version:
        raise PinError(
            f"{instrument.id}: roster.toml declares torchvision {instrument.library_version} but "
            f"{installed} is installed; install the declared version (the architecture code and "
            "transforms are part of the pin) or declare the installed one after review"
        )
    name, sha256 = check_weight_file(instrument, Path(source))
    target = Path(weights_dir) / sha256 / name
    if not target.is_file() or sha256_file(target) != sha256:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.part")
        shutil.copyfile(source, partial)
        partial.replace(target)
    return Pin(
        model_id=instrument.id,
        sha=sha256,
        revision_requested=name,
        pipeline_tag=instrument.pipeline_tag,
        library_name=TORCHVISION_SOURCE,
        license=instrument.license or "unknown",  # torchvision declares none per weight: never assumed
        gated=False,
        config={"library_version": installed, "weight_id": str(instrument.weight_id), "weight_file": name},
        output_dim=None,
        input_size=None,
        pinned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        endpoint=f"file:{Path(source).resolve().parent}",
        instrument_key=instrument.key,
    )


def torchvision_weight_file(instrument: Instrument, pin: Pin, weights_dir: Path) -> Path:
    """The home's copy of a torchvision pin's weight file, re-hashed: a missing or changed file is
    an error naming the file and how to pin it again."""
    name = pin.config.get("weight_file")
    if not name:
        raise PinError(f"pin {pin.key} of {instrument.id} records no weight_file; re-pin with `awb pin {instrument.key} --file PATH`")
    path = Path(weights_dir) / pin.sha / str(name)
    if not path.is_file():
        raise PinError(
            f"{path}: the weight file of pin {pin.key} is missing from this home; run "
            f"`awb pin {instrument.key} --file PATH/{name}` again"
        )
    actual = sha256_file(path)
    if actual != pin.sha:
        raise PinError(
            f"{path}: sha256 is {actual}, but pin {pin.key} is {pin.sha}; the file changed on disk. Delete it "
            f"and run `awb pin {instrument.key} --file PATH/{name}` with the published file"
        )
    return path
