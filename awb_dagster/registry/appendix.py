"""Render the registry as the whitepaper's "model cards and dependency registry" appendix."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from awb_dagster.registry.model import ADMISSION_FIELDS, Registry, RegistryEntry
from awb_dagster.registry.roster import Instrument


def render_appendix(registry: Registry) -> str:
    """Markdown: a summary table, the dead aliases, then one card per instrument."""
    lines = [
        "# Model cards and dependency registry",
        "",
        "Generated from the instrument roster and the pin lock; do not edit by hand.",
        "An instrument is *admitted* only with all of: " + ", ".join(ADMISSION_FIELDS) + ";",
        "otherwise it stays in *ideas* and cannot be materialized. Flagged licenses",
        "(other, apple-amlr, unknown, varies, cc-by-nc-*) and gated pins need an explicit opt-in.",
        "",
        "## Summary",
        "",
        _row("key", "model id", "family", "role", "license", "status", "missing", "active pin"),
        _row(*["---"] * 8),
    ]
    for entry in registry.entries:
        inst, pin = entry.instrument, entry.active_pin
        lines.append(
            _row(
                f"`{inst.key}`",
                f"`{inst.id}`",
                inst.family,
                inst.role,
                _license_label(entry),
                entry.status,
                ", ".join(entry.missing) or "-",
                f"`{pin.sha[:10]}`" if pin else "-",
            )
        )
    if registry.dead_aliases:
        lines += ["", "## Names that resolve to no model", "", _row("name", "what to do")]
        lines.append(_row("---", "---"))
        lines += [_row(f"`{d.alias}`", d.message) for d in registry.dead_aliases]
    lines += ["", "## Model cards"]
    for entry in registry.entries:
        lines += ["", *_card(entry)]
    return "\n".join(lines) + "\n"


def _card(entry: RegistryEntry) -> list[str]:
    inst = entry.instrument
    lines = [
        f"### `{inst.id}`",
        "",
        f"- **status**: {entry.status}"
        + (f" (missing: {', '.join(entry.missing)})" if entry.missing else ""),
        f"- **license flag**: {_license_label(entry)}",
    ]
    for field in dataclasses.fields(Instrument):
        if field.name != "failure_modes":
            lines.append(f"- **{field.name}**: {_value(getattr(inst, field.name))}")
    lines.append("- **failure_modes**:" + ("" if inst.failure_modes else " not declared"))
    lines += [f"  - {mode}" for mode in inst.failure_modes]
    lines += ["", "Pins (oldest first):", ""]
    if not entry.pins:
        lines.append(f"No pins yet: run `awb pin {inst.id}`.")
        return lines
    lines.append(
        _row("sha", "partition key", "pinned at", "revision", "license captured", "gated",
             "output dim", "input size", "retired", "endpoint")  # fmt: skip
    )
    lines.append(_row(*["---"] * 10))
    for pin in entry.pins:
        lines.append(
            _row(f"`{pin.sha}`", f"`{pin.key}`", pin.pinned_at, pin.revision_requested,
                 pin.license, _value(pin.gated), _value(pin.output_dim),
                 _value(pin.input_size), _value(pin.retired), pin.endpoint)  # fmt: skip
        )
    lines.append("")
    lines += [
        f"- config captured at `{pin.sha[:10]}`: `{json.dumps(dict(pin.config), sort_keys=True)}`"
        for pin in entry.pins
    ]
    return lines


def _license_label(entry: RegistryEntry) -> str:
    license = entry.instrument.license or "not declared"
    return f"{license} (opt-in required)" if entry.license_flagged else license


def _value(value: Any) -> str:
    if value is None:
        return "not declared"
    if value == ():
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    return str(value)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
