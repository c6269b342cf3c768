"""Chat rendering with every token tagged by segment.

Analyses select tokens by name ("prefill", "response", the last "template" token
before the assistant turn), so tagging happens once, here, from character offsets of
the rendered template rather than by guessing token counts per model family.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from traitscope.errors import TraitscopeError

SEGMENTS = ("template", "system", "user", "prefill", "response")
SEGMENT_CODE = {name: i for i, name in enumerate(SEGMENTS)}


@dataclass(frozen=True)
class Encoded:
    """Token ids of one conversation and the segment code of each token."""

    ids: list[int]
    segments: list[int]
    prompt_len: int  # tokens before prefill/response: the model's generation starts here

    @property
    def last_prompt_index(self) -> int:
        return self.prompt_len - 1


def messages_for(user: str, system: str | None = None) -> list[dict[str, str]]:
    """Messages list for one turn, with an optional system prompt."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Chat-template text ending with the assistant header, ready for prefill or generation."""
    if not getattr(tokenizer, "chat_template", None):
        raise TraitscopeError(
            "tokenizer has no chat template; set models.<variant>.chat_template in the config"
        )
    return apply_template(tokenizer, messages, add_generation_prompt=True)


def apply_template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """Render a conversation with the tokenizer's chat template.

    Some templates have no system turn and raise on one (Gemma 2's: "System role not
    supported"). Persona instructions are system prompts, so there the system prompt opens the
    first user turn instead, as Gemma 3's own template does; the job log says so once.
    """
    from jinja2 import TemplateError, TemplateSyntaxError

    def render(conversation: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    try:
        return render(messages)
    except TemplateSyntaxError as exc:
        raise TraitscopeError(
            f"the chat template does not parse ({exc}); fix models.<variant>.chat_template"
        ) from None
    except TemplateError as exc:
        refused = f"{exc}"
    folded = fold_system(messages)
    if folded is not None:
        try:
            text = render(folded)
        except TemplateError as exc:
            refused += f"; with the system prompt in the user turn: {exc}"
        else:
            if not getattr(tokenizer, "traitscope_folds_system", False):
                tokenizer.traitscope_folds_system = True
                print(
                    f"traitscope: the chat template rejects a system turn ({refused}); "
                    "system prompts open the first user turn instead",
                    file=sys.stderr,
                )
            return text
    raise TraitscopeError(
        f"the chat template rejects a conversation of roles {[m['role'] for m in messages]} ({refused}); "
        "set models.<variant>.chat_template to one that accepts it"
    )


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The conversation with its system prompt at the head of the first user turn (None if it
    does not open with a system turn followed by a user turn)."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return None
    user = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [user, *messages[2:]]


def encode(
    tokenizer: Any,
    messages: list[dict[str, str]],
    prefill: str = "",
    response: str | list[int] = "",
) -> Encoded:
    """Token ids for prompt + prefill + response, each token tagged with its segment.

    The prefill is appended to the open assistant turn with no end-of-turn token, as the
    model would see it when forced to continue; the response may be given as text or as
    the generated ids themselves (which avoids a decode/encode round trip).
    """
    text = render_prompt(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    char_tag = [SEGMENT_CODE["template"]] * len(text)
    cursor = 0
    for msg in messages:
        role = msg["role"] if msg["role"] in ("system", "user") else "template"
        start = text.find(msg["content"], cursor)
        if start < 0:
            continue  # templates that rewrite content keep the "template" tag
        end = start + len(msg["content"])
        char_tag[start:end] = [SEGMENT_CODE[role]] * (end - start)
        cursor = end
    segments = []
    for a, b in enc["offset_mapping"]:
        # a token is content if any of its characters is; special tokens have empty spans
        tags = [char_tag[i] for i in range(a, b) if char_tag[i] != SEGMENT_CODE["template"]]
        segments.append(tags[0] if tags else SEGMENT_CODE["template"])
    prompt_len = len(ids)
    if prefill:
        pre = tokenizer(prefill, add_special_tokens=False)["input_ids"]
        ids += pre
        segments += [SEGMENT_CODE["prefill"]] * len(pre)
    resp = (
        response
        if isinstance(response, list)
        else (tokenizer(response, add_special_tokens=False)["input_ids"] if response else [])
    )
    ids += list(resp)
    segments += [SEGMENT_CODE["response"]] * len(resp)
    return Encoded(ids=ids, segments=segments, prompt_len=prompt_len)
