"""Florence-2 text tasks (seed 10.2): which registry prompts a Florence-2 captioner runs, and how its
generated ids become the task's text, following the published recipe of transformers' native
``Florence2Processor``: the prompt is the task token alone (the processor expands it into the
task's question and puts the image tokens in front), and the answer is
``post_process_generation(batch_decode(ids, skip_special_tokens=False), task=..., image_size=...)``.

Each task token is its own instrument (its own asset, prompt and records). Only the tasks whose
answer is plain text run here (:data:`TEXT_TASKS`); the region tasks (``<OD>``,
``<OCR_WITH_REGION>``, grounding, segmentation) answer boxes or polygons, which the caption record
cannot hold. No Dagster.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from awb_dagster.instruments.common import InstrumentError
from awb_dagster.registry.prompts import Prompt

# Task token -> the registry task its prompts declare ("pure_text" answers in Florence2Processor).
TEXT_TASKS = {"<CAPTION>": "caption", "<DETAILED_CAPTION>": "caption", "<MORE_DETAILED_CAPTION>": "caption", "<OCR>": "ocr"}


def florence_task(prompt: Prompt) -> str:
    """The task token ``prompt`` runs; an :class:`InstrumentError` naming the prompt otherwise."""
    task = prompt.template.strip()
    if prompt.labels or task not in TEXT_TASKS or prompt.template != task:
        raise InstrumentError(
            f"prompt {prompt.id}@v{prompt.version} ({prompt.template!r}) is not a Florence-2 text task: a Florence-2 "
            f"prompt's template is exactly one task token of {', '.join(TEXT_TASKS)} (the region tasks answer boxes, "
            "not text)"
        )
    if prompt.task != TEXT_TASKS[task]:
        raise InstrumentError(f"prompt {prompt.id}@v{prompt.version}: {task} is an {TEXT_TASKS[task]!r} task, the prompt declares {prompt.task!r}")
    return task


def florence_answer(processor, generated: Sequence[int], task: str, image: Image.Image) -> tuple[str, tuple[int, ...]]:
    """The task's text and its token ids: the processor's ``post_process_generation`` answer, and the
    generated ids without the sequence framing it strips (decoder start, ``<s>``, ``</s>``, padding).
    Florence's ``<loc_N>`` and task tokens are special to the tokenizer but are answer content, so
    they stay in both."""
    tokenizer = processor.tokenizer
    decoded = processor.batch_decode([list(generated)], skip_special_tokens=False)[0]
    answer = processor.post_process_generation(decoded, task=task, image_size=image.size)[task]
    framing = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids = tuple(int(token) for token in generated if int(token) not in framing)
    return str(answer).strip(), ids
