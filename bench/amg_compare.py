"""Automatic mask generation, awb's ``MaskGenerator`` (transformers SamModel) against
segment-anything's own ``SamAutomaticMaskGenerator``, on the same weights, pixels and settings,
measured in one process run.

    python bench/amg_compare.py                                    # vit_b, 16x16 points, CPU
    python bench/amg_compare.py --arch tiny --points-per-side 8 --pred-iou-thresh 0  # smoke run
    python bench/amg_compare.py --device cuda --points-per-side 32 # ours in bf16, reference fp32

Weights: segment-anything's ``sam_model_registry[arch]()`` with seeded random weights (the
model's speed does not depend on weight values, the post-processing's does through mask detail:
see Filters); ours is the same state dict converted by
``awb_dagster.instruments.sam_convert``, published on a loopback hub under its registry id,
pinned, and loaded by ``MaskGenerator`` unchanged. ``--arch tiny`` is a small custom SAM.

Pixels: the plate (a real one from ../shared/plates when present, else a synthetic one) is
resized once to the working size (PIL bilinear, longest side ``--max-side``, ours' own rule);
both generators receive that same array, so ours does not resize again.

Filters: random weights give logits of about +-0.05, so every stability score is 0 and the
predicted IoUs lie in about [-0.07, 0.06]: segment-anything's defaults (0.88, 0.95) keep nothing.
The masks are pixel noise spanning the whole plate, so every box is the full plate and box NMS
keeps one mask. Both generators get the same relaxed filters: ``--pred-iou-thresh 0.03`` (about
the top quarter), ``--stability-score-thresh 0`` (off), ``--box-nms-thresh 1.0`` (keep all), so
agreement is measured over every kept prompt mask; every setting is written to the JSON. Noise
masks have ~1e5 RLE runs each (real masks have few), which inflates the post-processing share
of the time (segment-anything's ``MaskData.cat`` deep-copies every RLE) for both alike.

Figures per generator: seconds per plate (median and all repeats, after one warm-up each, the
order alternating per repeat); peak memory per plate: on CPU the peak resident set above the
resident set before the call (Linux VmHWM, reset through /proc/self/clear_refs before each
call), on CUDA ``torch.cuda.max_memory_allocated`` above the allocation before the call.
Agreement: for each reference mask the best IoU among ours, and for each of ours the best IoU
among the reference (pycocotools ``iou`` on RLEs), both means reported with the mask counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PLATES = REPO.parent / "shared" / "plates"
DEFAULT_PLATE = "audubon_p026_carolina-parrot.jpg"

REGISTRY_IDS = {
    "vit_b": "facebook/sam-vit-base",
    "vit_l": "facebook/sam-vit-large",
    "vit_h": "facebook/sam-vit-huge",
    "tiny": "awb-demo/tiny-sam",
}


def original_sam(arch: str, seed: int) -> torch.nn.Module:
    """segment-anything's model (real-size variants, or a small custom one), seeded random weights."""
    from segment_anything import sam_model_registry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch != "tiny":
            sam = sam_model_registry[arch]()
        else:
            sam = _tiny_original_sam()
        # segment-anything initializes absolute and relative position tables at zero; draw them
        # so that the mapping of every tensor matters for agreement.
        with torch.no_grad():
            for name, param in sam.named_parameters():
                if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    return sam.eval()


def _tiny_original_sam() -> torch.nn.Module:
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=16,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=2, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            transformer_dim=16, transformer=TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=32, num_heads=8),
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=16,
        ),
    )  # fmt: skip


def converted_repo(sam: torch.nn.Module) -> dict[str, bytes]:
    """Hub files (safetensors + processor) of ``sam`` converted to transformers' layout."""
    from awb_dagster.instruments.sam_convert import model_from_original, processor_for

    model = model_from_original({k: v.detach().clone() for k, v in sam.state_dict().items()})
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor_for(model.config).save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def plate_pixels(plate: str | None, max_side: int) -> tuple[np.ndarray, str]:
    """The plate at working size as HWC uint8 RGB, and where it came from."""
    from awb_dagster.plates.imaging import working_size

    path = Path(plate) if plate else PLATES / DEFAULT_PLATE
    if path.is_file():
        image = Image.open(path).convert("RGB")
        source = str(path.relative_to(REPO.parent) if path.is_relative_to(REPO.parent) else path)
    else:
        rng = np.random.default_rng(0)
        coarse = rng.integers(0, 256, (40, 33, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((2000, 2429), Image.Resampling.BICUBIC)
        source = "synthetic 2000x2429 (smooth colour fields)"
    work = working_size(*image.size, max_side)
    if work != image.size:
        image = image.resize(work, Image.Resampling.BILINEAR)  # MaskGenerator's own working resize
    return np.ascontiguousarray(np.asarray(image)), f"{source} at {work[0]}x{work[1]}"


class PeakMemory:
    """Peak memory of one call above its starting point: CUDA allocator, or Linux VmHWM."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = (
            "torch.cuda.max_memory_allocated above the allocation before the call"
            if device.type == "cuda"
            else "peak RSS (VmHWM, reset via /proc/self/clear_refs) above RSS before the call"
        )

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self._start = self._status("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self.peak = self._status("VmHWM") - self._start


def agreement(ours: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float | int | None]:
    """Mean best-match IoU in both directions (pycocotools IoU on RLEs)."""
    from pycocotools import mask as mask_utils

    def rles(masks: list[np.ndarray]) -> list[dict]:
        return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]

    result: dict[str, float | int | None] = {"masks_ours": len(ours), "masks_reference": len(reference)}
    if not ours or not reference:
        result.update(mean_best_iou_reference_to_ours=None, mean_best_iou_ours_to_reference=None)
        return result
    iou = np.asarray(mask_utils.iou(rles(reference), rles(ours), [0] * len(ours)))  # [reference, ours]
    result["mean_best_iou_reference_to_ours"] = float(iou.max(axis=1).mean())
    result["mean_best_iou_ours_to_reference"] = float(iou.max(axis=0).mean())
    result["reference_masks_matched_at_0.95"] = int((iou.max(axis=1) >= 0.95).sum())
    result["ours_matched_at_0.95"] = int((iou.max(axis=0) >= 0.95).sum())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(REGISTRY_IDS), default="vit_b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="ours: auto = bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--plate", default=None, help=f"image file (default ../shared/plates/{DEFAULT_PLATE})")
    parser.add_argument("--max-side", type=int, default=1024, help="working size: longest side")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.03, help="relaxed for random weights")
    parser.add_argument("--stability-score-thresh", type=float, default=0.0, help="relaxed for random weights")
    parser.add_argument("--stability-score-offset", type=float, default=1.0)
    parser.add_argument("--box-nms-thresh", type=float, default=1.0, help="relaxed for random weights")
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--crop-nms-thresh", type=float, default=0.7)
    parser.add_argument("--min-mask-region-area", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per generator, after one warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="default bench/results-{cpu,gpu}/amg_compare-<arch>-pps<N>.json")
    args = parser.parse_args()

    from segment_anything import SamAutomaticMaskGenerator

    from awb_dagster.demo.hub import LoopbackHub
    from awb_dagster.instruments.amg import GeneratorSettings
    from awb_dagster.instruments.common import resolve_device
    from awb_dagster.instruments.sam import MaskGenerator
    from awb_dagster.registry.hub_settings import set_hub_endpoint
    from awb_dagster.registry.model import Registry
    from awb_dagster.registry.pins import capture_pin

    device = resolve_device(args.device)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="awb-amg-"))
    pixels, plate_source = plate_pixels(args.plate, args.max_side)
    settings = GeneratorSettings(
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers, crop_nms_thresh=args.crop_nms_thresh,
        min_mask_region_area=args.min_mask_region_area, max_working_side=args.max_side,
    )  # fmt: skip
    # segment-anything reads the mask threshold from the model (Sam.mask_threshold = 0.0).
    amg_settings = {k: v for k, v in asdict(settings).items() if k not in ("max_working_side", "mask_threshold")}

    started = time.perf_counter()
    sam = original_sam(args.arch, args.seed)
    assert sam.mask_threshold == settings.mask_threshold
    reference = SamAutomaticMaskGenerator(sam.to(device), output_mode="binary_mask", **amg_settings)
    model_id = REGISTRY_IDS[args.arch]
    hub = LoopbackHub(workdir / "hub")
    hub.add_commit(model_id, converted_repo(sam), license="apache-2.0", library_name="transformers",
                   pipeline_tag="mask-generation")  # fmt: skip
    with hub:
        endpoint = hub.start()
        set_hub_endpoint(endpoint)
        instrument = Registry.load(lock_path=workdir / "pins.lock").get(model_id).instrument
        pin = capture_pin(instrument, endpoint=endpoint)
        ours = MaskGenerator(instrument, pin, settings, device=args.device, dtype=args.dtype, cache_dir=workdir / "hf")
    print(f"{args.arch}: weights built, converted, published and loaded in {time.perf_counter() - started:.1f}s; "
          f"plate {plate_source}")  # fmt: skip

    image = Image.fromarray(pixels)
    runners = {
        "ours": lambda: [m.mask for m in ours.generate(image)],
        "reference": lambda: [r["segmentation"] for r in reference.generate(pixels)],
    }
    memory = PeakMemory(device)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, list[int]] = {name: [] for name in runners}
    masks: dict[str, list[np.ndarray]] = {}
    for name, run in runners.items():  # warm-up: first-call allocations, lazy imports, kernels
        with torch.inference_mode():
            run()
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(runners)[::-1]
        for name in order:
            with torch.inference_mode(), memory:
                begin = time.perf_counter()
                masks[name] = runners[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - begin)
            peaks[name].append(memory.peak)
            print(f"  repeat {repeat} {name:9s} {seconds[name][-1]:7.2f}s  {memory.peak / 2**20:8.0f} MiB  "
                  f"{len(masks[name])} masks")  # fmt: skip

    agree = agreement(masks["ours"], masks["reference"])
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "bench": "amg_compare",
        "arch": args.arch,
        "registry_id": model_id,
        "weights": f"segment-anything sam_model_registry[{args.arch!r}] seeded random (seed {args.seed}), "
        "position tables drawn N(0, 0.02); ours converted by awb_dagster.instruments.sam_convert",
        "plate": plate_source,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dtype_ours": str(ours.dtype).removeprefix("torch."),
        "dtype_reference": "float32",
        "settings": asdict(settings),
        "filters_note": "random weights: filters relaxed identically for both "
        f"(pred_iou_thresh={settings.pred_iou_thresh}, stability_score_thresh={settings.stability_score_thresh}, "
        f"box_nms_thresh={settings.box_nms_thresh}); segment-anything's defaults (0.88, 0.95, 0.7) keep no "
        "random-weight mask (stability 0) and NMS would keep one (every noise mask's box is the full plate)",
        "repeats": args.repeats,
        "seconds_per_plate": {name: {"median": median[name], "all": values} for name, values in seconds.items()},
        "speedup_reference_over_ours": median["reference"] / median["ours"],
        "peak_memory_bytes": {name: max(values) for name, values in peaks.items()},
        "peak_memory_method": memory.method,
        "agreement": agree,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    import segment_anything
    import transformers

    result["versions"].update(transformers=transformers.__version__,
                              segment_anything=getattr(segment_anything, "__version__", "installed"))  # fmt: skip

    print(f"\n{'':10s} {'s/plate':>9s} {'peak MiB':>9s} {'masks':>6s}")
    for name in runners:
        print(f"{name:10s} {median[name]:9.2f} {max(peaks[name]) / 2**20:9.0f} {len(masks[name]):6d}")
    print(f"reference/ours time: {result['speedup_reference_over_ours']:.2f}x")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(f"mean best-match IoU: reference->ours {fmt(agree['mean_best_iou_reference_to_ours'])}, "
          f"ours->reference {fmt(agree['mean_best_iou_ours_to_reference'])}")  # fmt: skip
    print(result["filters_note"])

    results_dir = REPO / "bench" / ("results-gpu" if device.type == "cuda" else "results-cpu")
    out = Path(args.out) if args.out else results_dir / f"amg_compare-{args.arch}-pps{args.points_per_side}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
