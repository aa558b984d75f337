"""Plain-text reports of provenance data for a terminal: the lineage trace of one record and
column-aligned tables. Used by ``awb`` and by the demo's summary; no Dagster, no models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def text_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """``rows`` as a left-aligned text table with a header and a dashed rule; missing cells are blank."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    header = "  ".join(c.ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([header, "  ".join("-" * widths[c] for c in columns), *body])


def _record_shape(info: Mapping) -> str:
    mask = info.get("mask")
    if mask:
        return f"mask area {mask['area']}, bbox XYWH {mask['bbox']}"
    box = info.get("detection")
    if box:
        return f"box {box['label']!r} score {box['score']:.3f}, XYWH [{', '.join(f'{v:.1f}' for v in box['bbox'])}]"
    semantic = info.get("class")
    if semantic:
        return f"class {semantic['class_id']} {semantic['label']!r}, {semantic['pixel_count']} pixels"
    if info.get("score") is not None:
        return f"score {info['score']:.6g}"
    return f"{info['vector_dim']}-d"


def _verdict(artifact: Mapping) -> str:
    if artifact["verified"]:
        return "verified"
    if not artifact.get("artifact_matches_manifest", False):
        return "MISMATCH"
    return "NOT VERIFIED: the manifest does not match the seal log"


def format_lineage(info: Mapping) -> str:
    """The trace :func:`awb_dagster.provenance.lineage.lineage` returns, one field a line; a
    segment's mask record follows, indented, and a box-prompted mask's box record under it."""
    plate, model, artifact = info["plate"], info["model"], info["artifact"]
    lines = [
        f"record      {info['record_id']} ({info['scope']}, {_record_shape(info)})",
        f"plate       {plate['plate_id']}  {plate['path']}",
        f"plate sha   {plate['sha256']}",
        f"model       {model['model_id']} @ {model['sha']}  (pin {model['pin_key']}, license {model['license']})",
        f"preprocess  {info['preprocess_tag']}",
        f"run         {info['run_id']}  (dagster run {info['dagster_run_id']})",
        f"artifact    {artifact['path']}",
        f"sha256      {artifact['sha256']}  ({_verdict(artifact)})",
    ]
    if not artifact["verified"] and artifact.get("artifact_matches_manifest", False):
        lines.append(f"manifest    {artifact['manifest']}")
    if info.get("scope") == "tile":
        lines.insert(1, f"tile        {info['region_ref']} (XYWH, plate pixels)")
    prompt = (info.get("detection") or {}).get("prompt")
    if prompt:
        version = f"v{prompt['version']}, {prompt['text']!r}" if prompt["version"] else "NOT in this prompt registry"
        lines.insert(1, f"prompt      {prompt['prompt_id']} sha256 {prompt['sha256']} ({version})")
    region = info.get("region")
    if region:
        lines.append("region      the mask this segment was cut from:")
        lines.extend("  " + line for line in format_lineage(region).splitlines())
    box = info.get("box")
    if box:
        lines.append("box         the detected box this mask was prompted with:")
        lines.extend("  " + line for line in format_lineage(box).splitlines())
    embedding = info.get("embedding")
    if embedding:
        lines.append("embedding   the embedding record this score was computed from:")
        lines.extend("  " + line for line in format_lineage(embedding).splitlines())
    return "\n".join(lines)
