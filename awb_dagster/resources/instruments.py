"""Torch placement and the loaded-instrument cache: weights load once per run per pin."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from awb_dagster.instruments.aesthetic_mlp import AestheticMlp
from awb_dagster.instruments.captioner import Captioner

from awb_dagster.instruments.aesthetic_v1 import AestheticPredictorV1
from awb_dagster.instruments.birder_classifier import BirderClassifier
from awb_dagster.instruments.classifier import ImageClassifier
from awb_dagster.instruments.convnet import ConvNetFeatures
from awb_dagster.instruments.detection import ObjectDetector
from awb_dagster.instruments.grounding import GroundedDetector
from awb_dagster.instruments.embedders import Embedder, load_embedder
from awb_dagster.instruments.embedding import resolve_device
from awb_dagster.constants import SAM_FAMILIES
from awb_dagster.instruments.sam import GeneratorSettings, MaskGenerator
from awb_dagster.instruments.semantic import SegmenterSettings, SemanticSegmenter
from awb_dagster.instruments.tesseract import TesseractReader, ZoneSettings
from awb_dagster.instruments.text_tower import TextTower
from awb_dagster.instruments.trocr import LineRecognizer
from awb_dagster.instruments.u2net import ForegroundSegmenter, ForegroundSettings
from awb_dagster.registry.prompts import Decoding
from awb_dagster.registry.lock import Pin, PinLock
from awb_dagster.registry.prompts import Prompt
from awb_dagster.registry import Instrument, LicenseOptInError
from awb_dagster.registry.weight_files import weight_files_dir
from awb_dagster.resources.home import AwbHome
from awb_dagster.resources.hub import HubResource


class TorchResource(dg.ConfigurableResource):
    """Device, dtype and batching policy for GPU-heavy steps."""

    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto = bfloat16 on CUDA, float32 on CPU"
    )
    batch_size: int = Field(default=32, ge=1, description="Plates per forward pass")
    decode_workers: int = Field(default=4, ge=1, description="Threads decoding plates ahead of the model")
    prefetch_batches: int = Field(default=2, ge=0, description="Batches decoded ahead of the model")
    seal_every: int = Field(
        default=0,
        ge=0,
        description="Plates per sealed run (a killed run loses at most this many); 0 = four batches, "
        "at least 64 plates",
    )
    jpeg_draft: bool = Field(
        default=True,
        description="Decode JPEGs at the largest DCT reduction keeping both sides >= 2x the "
        "model input side (recorded in the preprocess tag); False decodes at full size",
    )
    decoder: Literal["pil", "torchvision"] = Field(
        default="pil",
        description="Plate decoder of the embedding families: pil, or torchvision (decode_jpeg, batched "
        "nvjpeg on CUDA, full size) for RGB/grayscale JPEGs with PIL for every other plate; each "
        "plate's preprocess tag names the decoder that made its pixels",
    )

    def resolved_device(self) -> str:
        return str(resolve_device(self.device))


class InstrumentsResource(dg.ConfigurableResource):
    """Hands out loaded instruments; each (pin) loads once per run and process."""

    home: AwbHome
    hub: HubResource
    torch: TorchResource
    license_opt_in: list[str] = Field(
        default_factory=list,
        description="Instrument keys, ids or license tags allowed to run despite a flagged license",
    )

    _loaded: dict[str, Embedder] = PrivateAttr(default_factory=dict)
    _generators: dict[tuple[str, GeneratorSettings], MaskGenerator] = PrivateAttr(default_factory=dict)
    _segmenters: dict[tuple[str, SegmenterSettings], SemanticSegmenter] = PrivateAttr(default_factory=dict)
    _convnets: dict[str, ConvNetFeatures] = PrivateAttr(default_factory=dict)
    _classifiers: dict[str, ImageClassifier | BirderClassifier] = PrivateAttr(default_factory=dict)
    _detectors: dict[tuple[str, float], ObjectDetector] = PrivateAttr(default_factory=dict)
    _grounded: dict[tuple[str, str, float, float], GroundedDetector] = PrivateAttr(default_factory=dict)
    _mlps: dict[str, AestheticMlp] = PrivateAttr(default_factory=dict)
    _foreground: dict[tuple[str, ForegroundSettings], ForegroundSegmenter] = PrivateAttr(default_factory=dict)
    _towers: dict[str, TextTower] = PrivateAttr(default_factory=dict)
    _predictors: dict[str, AestheticPredictorV1] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._loaded = {}
        self._generators = {}
        self._segmenters = {}
        self._convnets = {}
        self._classifiers = {}
        self._detectors = {}
        self._grounded = {}
        self._mlps = {}
        self._foreground = {}
        self._towers = {}
        self._predictors = {}

    def embedder(self, pin_key: str, family: str, *, jpeg_draft: bool | None = None) -> Embedder:
        """The loaded embedder for ``pin_key``, after the admission and license gates.
        ``jpeg_draft`` overrides the torch setting (regions need full-resolution plates)."""
        draft = self.torch.jpeg_draft if jpeg_draft is None else jpeg_draft
        key = f"{pin_key}|draft={draft}|decoder={self.torch.decoder}"
        if key in self._loaded:
            return self._loaded[key]
        instrument, pin = self._admitted(pin_key, family)
        embedder = load_embedder(
            instrument,
            pin,
            device=self.torch.device,
            dtype=self.torch.dtype,
            cache_dir=self.home.paths.hf_cache,
            local_files_only=self.hub.offline,
            jpeg_draft=draft,
            decoder=self.torch.decoder,
        )
        self._loaded[key] = embedder
        return embedder

    def family_of(self, pin_key: str) -> str:
        """The registry family of a locked pin (fails naming the lock file when it is not there)."""
        pin = PinLock.load(self.home.paths.lock).find_key(pin_key)
        if pin is None:
            raise dg.Failure(
                f"pin {pin_key} is not in the lock file {self.home.paths.lock}; "
                "pin the model first (`awb pin MODEL`)"
            )
        return self.home.registry().get(pin.model_id).instrument.family

    def mask_generator(self, pin_key: str, settings: GeneratorSettings) -> MaskGenerator:
        """The loaded mask generator for a SAM or SAM-HQ ``pin_key`` with ``settings``, after the gates."""
        key = (pin_key, settings)
        if key not in self._generators:
            instrument, pin = self._admitted(pin_key, *SAM_FAMILIES)
            self._generators[key] = MaskGenerator(
                instrument,
                pin,
                settings,
                device=self.torch.device,
                dtype=self.torch.dtype,
                cache_dir=self.home.paths.hf_cache,
                weights_dir=weight_files_dir(self.home.paths.root),
                local_files_only=self.hub.offline,
            )
        return self._generators[key]

    def semantic_segmenter(self, pin_key: str, settings: SegmenterSettings) -> SemanticSegmenter:
        """The loaded Mask2Former segmenter for ``pin_key`` after the gates. A flagged license
        without opt-in fails the step, saying how this code location takes the opt-in."""
        key = (pin_key, settings)
        if key not in self._segmenters:
            instrument, pin = self._admitted(pin_key, "mask2former")
            self._segmenters[key] = SemanticSegmenter(
                instrument,
                pin,
                settings,
                **self._pinned_files,
            )
        return self._segmenters[key]

    def detector(self, pin_key: str, family: str, *, score_threshold: float) -> ObjectDetector:
        """The loaded object detector for ``pin_key`` (a ``family`` pin) at ``score_threshold``, after the gates."""
        key = (pin_key, score_threshold)
        if key not in self._detectors:
            instrument, pin = self._admitted(pin_key, family)
            self._detectors[key] = ObjectDetector(
                instrument, pin, score_threshold=score_threshold, **self._pinned_files,
            )  # fmt: skip
        return self._detectors[key]

    def grounded_detector(
        self, pin_key: str, family: str, prompt: Prompt, *, box_threshold: float, text_threshold: float
    ) -> GroundedDetector:
        """The loaded GroundingDINO for ``pin_key`` with ``prompt`` and thresholds, after the gates."""
        key = (pin_key, prompt.sha256, box_threshold, text_threshold)
        if key not in self._grounded:
            instrument, pin = self._admitted(pin_key, family)
            self._grounded[key] = GroundedDetector(
                instrument, pin, prompt, box_threshold=box_threshold, text_threshold=text_threshold,
                **self._pinned_files,
            )  # fmt: skip
        return self._grounded[key]

    def classifier(self, pin_key: str, family: str) -> ImageClassifier | BirderClassifier:
        """The loaded classifier probe for ``pin_key`` (a ``family`` pin) after the gates: birder's
        layout for a ``library = "birder"`` entry, else transformers'."""
        if pin_key not in self._classifiers:
            instrument, pin = self._admitted(pin_key, family)
            loader = BirderClassifier if instrument.library == "birder" else ImageClassifier
            self._classifiers[pin_key] = loader(
                instrument, pin, **self._pinned_files,
            )  # fmt: skip
        return self._classifiers[pin_key]

    def aesthetic_mlp(self, pin_key: str) -> AestheticMlp:
        """The loaded CLIP-fed aesthetic MLP for ``pin_key`` after the gates."""
        if pin_key not in self._mlps:
            instrument, pin = self._admitted(pin_key, "aesthetic")
            self._mlps[pin_key] = AestheticMlp(
                instrument, pin, cache_dir=self.home.paths.hf_cache, local_files_only=self.hub.offline
            )
        return self._mlps[pin_key]

    def foreground_segmenter(self, pin_key: str, settings: ForegroundSettings) -> ForegroundSegmenter:
        """The loaded U^2-Net foreground prior for ``pin_key`` with ``settings``, after the gates."""
        key = (pin_key, settings)
        if key not in self._foreground:
            instrument, pin = self._admitted(pin_key, "u2net")
            self._foreground[key] = ForegroundSegmenter(
                instrument, pin, settings, **self._pinned_files,
            )  # fmt: skip
        return self._foreground[key]

    def text_tower(self, pin_key: str, family: str) -> TextTower:
        """The loaded text tower of a CLIP or SigLIP ``pin_key`` after the gates (zero-shot labels)."""
        if pin_key not in self._towers:
            instrument, pin = self._admitted(pin_key, family)
            self._towers[pin_key] = TextTower(
                instrument, pin, **self._pinned_files,
            )  # fmt: skip
        return self._towers[pin_key]

    def aesthetic_v1(self, pin_key: str) -> AestheticPredictorV1:
        """The loaded image-fed aesthetics predictor V1 for ``pin_key`` after the gates."""
        if pin_key not in self._predictors:
            instrument, pin = self._admitted(pin_key, "aesthetic-image")
            self._predictors[pin_key] = AestheticPredictorV1(
                instrument, pin, **self._pinned_files,
            )  # fmt: skip
        return self._predictors[pin_key]

    def convnet(self, pin_key: str) -> ConvNetFeatures:
        """The loaded torchvision ConvNet for ``pin_key`` after the gates (torchvision declares no
        license per weight: ``unknown`` needs the opt-in, as for a flagged hub model)."""
        if pin_key not in self._convnets:
            instrument, pin = self._admitted(pin_key, "convnet")
            self._convnets[pin_key] = ConvNetFeatures(
                instrument, pin, weights_dir=weight_files_dir(self.home.paths.root), device=self.torch.device
            )
        return self._convnets[pin_key]

    def tesseract_reader(self, pin_key: str, settings: ZoneSettings) -> TesseractReader:
        """The installed Tesseract engine, checked against ``pin_key`` (version and traineddata
        sha256), after the gates (its declared license `varies` needs the opt-in)."""
        instrument, pin = self._admitted(pin_key, "tesseract")
        return TesseractReader(instrument, pin, settings)

    def trocr_recognizer(self, pin_key: str, decoding: Decoding) -> LineRecognizer:
        """The TrOCR model of ``pin_key`` with ``decoding``, after the gates (its declared license is
        `unknown`: it needs the opt-in)."""
        instrument, pin = self._admitted(pin_key, "trocr")
        return LineRecognizer(
            instrument, pin, decoding, **self._pinned_files,
        )  # fmt: skip

    def captioner(self, pin_key: str, family: str, prompt: Prompt, decoding: Decoding) -> Captioner:
        """The captioner of ``pin_key`` with ``prompt`` and ``decoding``, after the gates; a row's
        ``min_memory_gb`` is checked against the device before anything loads."""
        instrument, pin = self._admitted(pin_key, family)
        return Captioner(
            instrument, pin, prompt, decoding, **self._pinned_files,
        )  # fmt: skip

    @property
    def _pinned_files(self) -> dict[str, object]:
        """How every adapter loads a pin: the torch settings, the home's hub cache, offline or not."""
        return {"device": self.torch.device, "dtype": self.torch.dtype,
                "cache_dir": self.home.paths.hf_cache, "local_files_only": self.hub.offline}  # fmt: skip

    def _admitted(self, pin_key: str, *families: str) -> tuple[Instrument, Pin]:
        """The instrument and pin of ``pin_key`` after the admission gates; a flagged license without
        the opt-in fails the step, saying how this code location takes the opt-in."""
        registry = self.home.registry()
        pin = PinLock.load(self.home.paths.lock).find_key(pin_key)
        if pin is None:
            raise dg.Failure(
                f"pin {pin_key} is not in the lock file {self.home.paths.lock}; "
                "pin the model first (`awb pin MODEL`)"
            )
        try:
            entry = registry.require_admitted(pin.model_id, license_opt_in=self.license_opt_in)
        except LicenseOptInError as exc:
            name = registry.get(pin.model_id).instrument.key
            raise dg.Failure(
                description=f"{exc}. In this code location the opt-in is the instruments resource's "
                f"`license_opt_in`, read from the environment: set AWB_LICENSE_OPT_IN={name} (a comma list) "
                "for `dagster dev`, `awb ui` and `awb run`, then re-run."
            ) from exc
        if entry.instrument.family not in families:
            raise dg.Failure(f"pin {pin_key} is a {entry.instrument.family} model, not {' or '.join(families)}")
        return entry.instrument, pin

    @property
    def loads(self) -> int:
        """Model loads performed by this resource in this run."""
        caches = (self._loaded, self._generators, self._segmenters, self._convnets, self._classifiers, self._mlps,
                  self._detectors, self._grounded, self._foreground, self._towers,
                  self._predictors)  # fmt: skip
        return sum(len(cache) for cache in caches)
