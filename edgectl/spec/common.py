"""Shared pieces of every manifest document: the envelope, names, and the frozen model base."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from edgectl_agent.names import NAME_PATTERN
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

API_VERSION = "edgectl.dev/v1alpha1"

# Names end up in file names, URLs and remote argv: the rule the agent checks too (edgectl_agent.names).
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

LABEL_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]


class Frozen(BaseModel):
    """Base of every spec model: immutable, unknown keys are errors, every field described."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)


class Metadata(Frozen):
    name: Name = Field(description="Unique name of this object within its kind (lowercase letters, digits, '.', '_', '-').")
    description: str | None = Field(default=None, description="Free text shown in listings.")
    labels: dict[LabelValue, LabelValue] = Field(default_factory=dict, description="Key/value labels for selection.")


def is_union(ann: Any) -> bool:
    """``X | Y`` or ``Union[X, Y]``."""
    return get_origin(ann) in (Union, types.UnionType)


def unwrap_annotation(ann: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the interesting type (used by the loader and the schema)."""
    while True:
        if hasattr(ann, "__metadata__"):  # Annotated
            ann = get_args(ann)[0]
            continue
        if is_union(ann):
            args = [a for a in get_args(ann) if a is not type(None)]
            if len(args) == 1:
                ann = args[0]
                continue
        return ann


class Document(Frozen):
    """Base of the four manifest kinds: their apiVersion, and their name (from metadata). Each kind adds its
    ``kind`` literal, ``metadata`` (described for that kind) and ``spec``."""

    apiVersion: Literal[API_VERSION] = Field(description=f"Always {API_VERSION}.")

    @property
    def name(self) -> str:
        return self.metadata.name
