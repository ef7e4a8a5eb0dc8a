"""Request features beyond sampling that only some runtimes implement, passed to a model as one ``ChatExtras``.

A model that implements any of them lists their request-field names in ``extra_features`` and has
``chat_with_extras`` / ``complete_with_extras`` (same results as ``chat`` / ``complete``). The API layer refuses a
requested feature the serving runtime does not list with a 400 naming the field and the runtime
(``edgectl_agent.inference.check_extras``), so runtimes without them need no change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RESPONSE_FORMAT = "response_format"
INCLUDE_USAGE = "stream_options.include_usage"
TOOLS = "tools"
LOGPROBS = "logprobs"


@dataclass(frozen=True)
class ChatExtras:
    """``json_schema``: the reply must be JSON valid against this schema (grammar-constrained decoding); ``{}``
    is any JSON value, ``{"type": "object"}`` any object (OpenAI's ``json_object``). ``schema_param``: the request
    field the schema came from, named in errors; ``format_field``: the request field that asked for a format
    (OpenAI's ``response_format``, Ollama's ``format``). ``include_usage``: a stream ends with a chunk carrying
    ``usage`` and no choices (OpenAI's ``stream_options.include_usage``). ``tools``, ``tool_choice``,
    ``parallel_tool_calls``: OpenAI's, already validated (the chosen function is among the tools); the tools are
    in use unless there are none or ``tool_choice`` is "none" (``edgectl_agent.runtimes.tool_calls``)."""

    json_schema: dict[str, Any] | None = None
    schema_param: str = "response_format.json_schema.schema"
    format_field: str = RESPONSE_FORMAT
    include_usage: bool = False
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    logprobs: int | None = None  # None: none; 0: each token's log-probability; k: and the k most likely

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def requested(self) -> list[str]:
        """The request fields of the features asked for, as ``extra_features`` names them."""
        names = []
        if self.json_schema is not None:
            names.append(RESPONSE_FORMAT)
        if self.include_usage:
            names.append(INCLUDE_USAGE)
        if self.uses_tools:
            names.append(TOOLS)
        if self.logprobs is not None:
            names.append(LOGPROBS)
        return names

    def field_of(self, feature: str) -> str:
        """The request field to name in an error about ``feature``."""
        return self.format_field if feature == RESPONSE_FORMAT else feature

    def __bool__(self) -> bool:
        return bool(self.requested())


def usage_chunk(base: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream that asked for usage: OpenAI's shape, empty choices."""
    return {**base, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                             "total_tokens": prompt_tokens + completion_tokens}}
