"""The closed sets of names steerwatch accepts, as Literal types with their values spelled once.

Checked at the edges (a user's spec, a file, a request) with errors that list the valid values;
inside, code passes these types around.
"""
from __future__ import annotations

from typing import Literal, get_args

Op = Literal["add", "ablate", "clamp"]
"""A steering operation: push along the direction, remove the component, or set it."""
OPS: tuple[str, ...] = get_args(Op)

Position = Literal["all", "prompt", "generated"]
"""Which forward passes a steering spec acts on: every one, the prompt pass, the generated tokens."""
POSITIONS: tuple[str, ...] = get_args(Position)

ReadPosition = Literal["completion_mean", "last_prompt", "last_token"]
"""Where extraction reads an example: mean over the completion, the last prompt token, the last token."""
READ_POSITIONS: tuple[str, ...] = get_args(ReadPosition)

Method = Literal["mean_diff", "pca_diff", "pca_center", "logistic", "lda"]
"""Extraction methods (the registry in steerwatch.extract.methods implements exactly these)."""
METHODS: tuple[str, ...] = get_args(Method)

Aggregate = Literal["mean", "max", "last", "max_turn"]
"""How a detector turns token scores into one response score."""
AGGREGATES: tuple[str, ...] = get_args(Aggregate)

ConditionalMode = Literal["token", "prompt"]
"""When conditional steering switches on: from the token that fires the trigger, or for the whole
answer when the prompt fires it."""
CONDITIONAL_MODES: tuple[str, ...] = get_args(ConditionalMode)
