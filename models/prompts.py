"""InternVL2 conversation templates and the query string ``chat()`` / ``batch_chat()`` build.

Everything here reproduces the official code's strings exactly (checked against the conformance
kit's ``prompts/prompts.json``). The rules, in the order the official code applies them:

1. **Automatic image prefix** (QUIRKS 3). ``chat()`` prepends ``"<image>\\n"`` to the question only
   when there is no history *and* images are given *and* the question has no ``<image>``.
   ``batch_chat()`` prepends it whenever images are given and the question lacks ``<image>``
   (history is not supported there). The prefixed question is what goes into the history.
2. **Conversation rendering** (``MPT`` separator style, QUIRKS 1): ``system_template`` formatted
   with the system message, then ``sep``; then for each turn ``role + message + sep`` — or just
   ``role`` when the message is empty/None (the final assistant turn, but also an empty answer
   in the history). No newline after ``<|im_end|>`` except where ``sep`` itself has one
   (``internvl2_5``).
3. **Image expansion** (QUIRKS 4/5): for each entry ``n`` of ``num_patches_list`` in order, the
   *first remaining* ``<image>`` anywhere in the rendered query (system message and history
   included) is replaced by ``<img>`` + ``<IMG_CONTEXT>`` × ``num_image_token·n`` + ``</img>``.
   Entries without a placeholder left are silently dropped; placeholders without an entry stay
   as literal ``<image>`` text. ``strict=True`` turns both into :class:`InvalidInput`.
4. **Stopping** (QUIRKS 6/7): the only stop token is ``sep.strip()``; the answer is the decoded
   text split at that string, first part, stripped (:func:`clean_response`).

Pure string functions; no tokenizer, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from models.errors import InvalidInput, UnknownTemplate

IMAGE_PLACEHOLDER = "<image>"
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
NUM_IMAGE_TOKEN = 256  # tokens per 448x448 tile after pixel shuffle (all InternVL2 sizes)

#: System message of the three InternVL2 templates (note the ASCII ", " after "InternVL").
INTERNVL2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
    "英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
#: System message of the InternVL2.5 template (kept only because the kit has cases for it).
INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)

AutoPrefix = Literal["chat", "batch_chat"]
History = Sequence[tuple[str, str] | Sequence[str]]


@dataclass(frozen=True)
class Template:
    """One conversation template (``MPT`` separator style, the only one InternVL2 uses).

    ``stop_str`` is the string ``chat()`` really stops on: ``sep.strip()``. The templates' own
    ``stop_str`` field of conversation.py (``<|endoftext|>`` for Hermes-2) is unused by
    ``chat()``; it is kept as ``conversation_stop_str`` for reference only.
    """

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    sep_style: str = "MPT"
    conversation_stop_str: str | None = None

    @property
    def stop_str(self) -> str:
        return self.sep.strip()

    def system_prompt(self, system_message: str | None = None) -> str:
        """The rendered system block without its separator."""
        message = self.system_message if system_message is None else system_message
        return self.system_template.format(system_message=message)


_IM_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
_TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("internlm2-chat", "<|im_start|>system\n{system_message}", INTERNVL2_SYSTEM_MESSAGE,
                 _IM_ROLES, "<|im_end|>"),
        Template("Hermes-2", "<|im_start|>system\n{system_message}", INTERNVL2_SYSTEM_MESSAGE,
                 _IM_ROLES, "<|im_end|>", conversation_stop_str="<|endoftext|>"),
        Template("phi3-chat", "<|system|>\n{system_message}", INTERNVL2_SYSTEM_MESSAGE,
                 ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
        Template("internvl2_5", "<|im_start|>system\n{system_message}", INTERNVL2_5_SYSTEM_MESSAGE,
                 _IM_ROLES, "<|im_end|>\n"),
    )
}


def template_names() -> tuple[str, ...]:
    return tuple(_TEMPLATES)


def get_template(name: str) -> Template:
    """The template a checkpoint's config ``template`` names (case-sensitive, as the official
    registry). Unknown names raise :class:`UnknownTemplate`."""
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise UnknownTemplate(
            f"unknown conversation template {name!r}; known: {', '.join(_TEMPLATES)}"
        ) from None


def prepare_question(question: str, *, has_images: bool, history: History | None = None,
                     auto_prefix: AutoPrefix = "chat") -> str:
    """Apply the automatic ``<image>\\n`` prefix rule (QUIRKS 3) and return the question as it
    enters the conversation and the history. ``history`` counts as given when it is not None —
    even an empty list disables chat()'s prefix, exactly like the official ``history is None``."""
    if not has_images or IMAGE_PLACEHOLDER in question:
        return question
    if auto_prefix == "batch_chat" or history is None:
        return IMAGE_PLACEHOLDER + "\n" + question
    return question


def render_conversation(template: Template, turns: Sequence[tuple[str, str | None]],
                        system_message: str | None = None) -> str:
    """MPT ``get_prompt``: ``turns`` are ``(role, message)``; an empty/None message renders as
    the bare role (that is how the final assistant turn is opened)."""
    parts = [template.system_prompt(system_message), template.sep]
    for role, message in turns:
        parts.append(role + message + template.sep if message else role)
    return "".join(parts)


def image_block(num_patches: int, num_image_token: int = NUM_IMAGE_TOKEN) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` × (num_image_token · num_patches) + ``</img>`` (one per image)."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * num_patches) + IMG_END_TOKEN


def expand_image_placeholders(query: str, num_patches_list: Sequence[int], *,
                              num_image_token: int = NUM_IMAGE_TOKEN, strict: bool = False) -> str:
    """Replace ``<image>`` placeholders in order, one per ``num_patches_list`` entry (QUIRKS 4)."""
    if strict and query.count(IMAGE_PLACEHOLDER) != len(num_patches_list):
        raise InvalidInput(
            f"{query.count(IMAGE_PLACEHOLDER)} <image> placeholder(s) for {len(num_patches_list)} image(s)"
        )
    for num_patches in num_patches_list:
        query = query.replace(IMAGE_PLACEHOLDER, image_block(num_patches, num_image_token), 1)
    return query


def _check_patches(num_patches_list: Sequence[int], num_tiles: int | None) -> None:
    if any(int(n) < 0 for n in num_patches_list):
        raise InvalidInput(f"negative tile count in num_patches_list {list(num_patches_list)}")
    # chat(): assert pixel_values is None or len(pixel_values) == sum(num_patches_list)
    if num_tiles is not None and num_tiles != sum(num_patches_list):
        raise InvalidInput(
            f"pixel_values has {num_tiles} tiles but num_patches_list {list(num_patches_list)} "
            f"sums to {sum(num_patches_list)}"
        )


def build_query(template: Template, question: str, history: History | None,
                num_patches_list: Sequence[int] | None, *, num_image_token: int = NUM_IMAGE_TOKEN,
                system_message: str | None = None, auto_prefix: AutoPrefix = "chat",
                num_tiles: int | None = None, strict: bool = False) -> str:
    """The exact string the official ``chat()`` (or one row of ``batch_chat()``) tokenizes.

    - ``question``: as the caller passed it (before the automatic prefix).
    - ``history``: ``[(question, answer), ...]`` as returned by a previous round (questions
      already prefixed), or None for a first round. ``auto_prefix='batch_chat'`` refuses history.
    - ``num_patches_list``: tiles per image, in placeholder order; None or empty = no images
      (``pixel_values=None``). For the model card's "combined images" pass ``[sum]``.
      For ``batch_chat`` it is this row's single entry ``[n]``.
    - ``system_message``: overrides the template's (``model.system_message``); ``""`` is kept.
    - ``num_tiles``: when given, the number of tiles in pixel_values; a mismatch with
      ``sum(num_patches_list)`` raises :class:`InvalidInput` (chat()'s assert).
    - ``strict``: also refuse a placeholder/image count mismatch instead of the silent quirk.
    """
    patches = [int(n) for n in (num_patches_list or [])]
    _check_patches(patches, num_tiles)
    if auto_prefix == "batch_chat":
        if history:
            raise InvalidInput("batch_chat does not support history")
        if len(patches) > 1:
            raise InvalidInput("batch_chat takes one tile count per question")
        history = None
    prepared = prepare_question(question, has_images=bool(patches), history=history,
                                auto_prefix=auto_prefix)
    turns: list[tuple[str, str | None]] = []
    user, assistant = template.roles
    for old_question, old_answer in history or []:
        turns += [(user, old_question), (assistant, old_answer)]
    turns += [(user, prepared), (assistant, None)]
    query = render_conversation(template, turns, system_message)
    return expand_image_placeholders(query, patches, num_image_token=num_image_token, strict=strict)


def build_batch_queries(template: Template, questions: Sequence[str],
                        num_patches_list: Sequence[int] | None, *,
                        num_image_token: int = NUM_IMAGE_TOKEN,
                        system_message: str | None = None) -> list[str]:
    """``batch_chat()``: one image of ``num_patches_list[i]`` tiles per question (None = text
    only), automatic prefix whenever images are given."""
    if num_patches_list is not None and len(num_patches_list) != len(questions):
        raise InvalidInput(f"{len(questions)} questions but {len(num_patches_list)} tile counts")
    return [
        build_query(template, q, None, [] if num_patches_list is None else [num_patches_list[i]],
                    num_image_token=num_image_token, system_message=system_message,
                    auto_prefix="batch_chat")
        for i, q in enumerate(questions)
    ]


def next_history(history: History | None, prepared_question: str, response: str) -> list[tuple[str, str]]:
    """History after a round (what ``chat(return_history=True)`` returns): the old turns plus
    ``(prepared_question, response)`` — the question *after* the automatic prefix."""
    return [(str(q), str(a)) for q, a in (history or [])] + [(prepared_question, response)]


def clean_response(template: Template, text: str) -> str:
    """chat()'s post-processing of the decoded text: split at ``sep.strip()``, keep the first
    part, strip whitespace."""
    return text.split(template.stop_str)[0].strip()


def multi_image_question(n: int, prompt: str, *, combined: bool = False) -> str:
    """Model-card question for several images: separate mode labels each image
    (``Image-1: <image>\\nImage-2: <image>\\n`` + prompt, pass one tile count per image);
    combined mode is a single ``<image>\\n`` + prompt (pass ``[sum of tiles]``)."""
    if n < 1:
        raise InvalidInput("multi_image_question needs at least one image")
    if combined:
        return IMAGE_PLACEHOLDER + "\n" + prompt
    return "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1)) + prompt


def video_question(n_frames: int, prompt: str) -> str:
    """Model-card video question: ``Frame1: <image>\\n`` … ``FrameN: <image>\\n`` + prompt."""
    if n_frames < 1:
        raise InvalidInput("video_question needs at least one frame")
    return "".join(f"Frame{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n_frames + 1)) + prompt
