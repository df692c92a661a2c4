"""The engine interface: what the server, the evals and the lab need from a generation backend.

:class:`HFEngine` implements it on a Hugging Face model in this process (the runtime's
:func:`~steerwatch.runtime.session.generate`);
:class:`~steerwatch.runtime.vllm_engine.VLLMEngine` implements it on vLLM (docs/scale.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SteerwatchError
from .options import GenerationOptions
from .session import Generation, OnToken, generate

if TYPE_CHECKING:  # pragma: no cover
    from ..chat import Prompt
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..watch.detector import Detector
    from .conditional import Conditional


class Engine(Protocol):
    """A generation backend: one model, steered and watched per row."""

    @property
    def lm(self) -> LoadedModel:
        """The model (tokenizer, fingerprint, layer count) the engine serves."""
        ...

    def generate(self, prompts: Sequence[Prompt] | None, options: GenerationOptions | None = None, *,
                 steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
                 watch: Sequence[Detector] = (), conditional: Conditional | None = None,
                 on_token: OnToken | None = None,
                 prompt_ids: Sequence[Sequence[int]] | None = None, force: bool = False,
                 progress: bool = False) -> list[Generation]:
        """One :class:`~steerwatch.runtime.session.Generation` per prompt (see
        :func:`steerwatch.runtime.session.generate` for the arguments)."""
        ...


@dataclass
class HFEngine:
    """The in-process Hugging Face engine."""

    lm: LoadedModel

    def generate(self, prompts: Sequence[Prompt] | None, options: GenerationOptions | None = None, *,
                 steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
                 watch: Sequence[Detector] = (), conditional: Conditional | None = None,
                 on_token: OnToken | None = None,
                 prompt_ids: Sequence[Sequence[int]] | None = None, force: bool = False,
                 progress: bool = False) -> list[Generation]:
        return generate(self.lm, prompts, options, steer=steer, rows=rows, watch=watch, conditional=conditional,
                        on_token=on_token, prompt_ids=prompt_ids, force=force, progress=progress)


ENGINES = ("hf", "vllm")


def make_engine(lm: LoadedModel, engine: str = "hf", **kwargs: Any) -> Engine:
    """An engine on ``lm``: ``hf`` (in this process, the default) or ``vllm``
    (:class:`~steerwatch.runtime.vllm_engine.VLLMEngine`; ``kwargs`` go to it and on to ``vllm.LLM``)."""
    if engine == "hf":
        if kwargs:
            raise SteerwatchError(f"the hf engine takes no options, got {', '.join(sorted(kwargs))}")
        return HFEngine(lm)
    if engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(lm, **kwargs)
    raise SteerwatchError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
