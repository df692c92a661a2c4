from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import typer

from .app import app
from .common import check_engine, check_output_path, console, friendly, load, note, out
from .options import Device, Dtype, LayersPath, Model


@app.command("generate")
@friendly
def generate_cmd(
    prompt: list[str] | None = typer.Argument(None, help="One or more user prompts."),
    steer: list[str] | None = typer.Option(None, "--steer", "-s",
        help="PATH[@LAYERS]:OP[:POSITIONS], repeatable. OP: +0.02 / -0.04 (strength per layer, in units of the "
             "layer's typical residual norm; on the embedded model working doses are 0.02-0.04 on a 6-layer window "
             "and +0.08 turns answers incoherent), ablate, clamp=VALUE. POSITIONS: all (default), prompt, "
             "generated."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    system: str | None = typer.Option(None, help="System prompt."),
    raw: bool | None = typer.Option(None, "--raw/--chat",
        help="--raw: continue each prompt as plain text (no chat template, no User:/Assistant: wrapping) and print "
             "only the continuation: completion for base models. --chat: render a chat (the model's template, else "
             "the plain User:/Assistant: format). Default: --chat, or --raw for a model without a chat template "
             "(e.g. gemma-3-270m)."),
    compare: bool = typer.Option(False, "--compare", help="Also show the unsteered answer side by side."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", "-f",
        help="JSONL ({'prompt'} or {'messages'}, optional 'id') or a text file with one prompt per line."),
    output: Path | None = typer.Option(None, "--out", "-o", help="Write JSON Lines results here."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per answer."),
    batch_size: int = typer.Option(8, help="Prompts per batch."),
    sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (with --sample)."),
    seed: int | None = typer.Option(None, help="Random seed (with --sample)."),
    force: bool = typer.Option(False, help="Apply vectors even if they were built on other weights."),
    engine_name: str = typer.Option("hf", "--engine",
                                    help="Generation engine: 'hf' (Hugging Face, in this process) or 'vllm' "
                                         "(needs vLLM installed, see docs/scale.md)."),
    layers_path: LayersPath = None,
    watch: list[Path] | None = typer.Option(None, "--watch", "-w",
        help="Detector files (.det.json) or vectors (.sv) to score the answers with, repeatable: scores and flags "
             "are shown alongside the text. Detectors at or after a steered layer are scored from the text without "
             "steering, so they never read back the push."),
    steer_if: Path | None = typer.Option(None, "--steer-if",
        help="Make the --steer specs conditional: apply them only when this calibrated detector fires."),
    if_mode: str = typer.Option("token", help="With --steer-if: 'token' (from the token where the detector's "
                                              "running mean crosses its trigger threshold) or 'prompt' (the whole "
                                              "answer, when the prompt scores above threshold)."),
    acknowledge_distress: str | None = typer.Option(None, "--acknowledge-distress", metavar="REASON",
        help="Run steering that the policy guard refuses for pushing towards distress (docs/serve-guard.md); "
             "the reason is printed with the warning."),
    distress: Path | None = typer.Option(None, "--distress",
        help="The distress vector the guard checks --steer against (default: the built-in one, built on the "
             "model once and cached)."),
) -> None:
    """Generate answers, optionally steered and watched; print them or write JSON Lines. An answer whose
    text fails the coherence statistics (repetition, loops, low diversity) gets a warning."""
    from rich.table import Table
    from rich.text import Text

    from ..errors import SteerwatchError
    from ..runtime import Conditional, GenerationOptions, make_engine
    from ..steer import parse_steer_spec
    from ..types import ConditionalMode
    from ..watch.detector import load_detector

    items: list[dict[str, Any]] = [{"id": str(i), "prompt": p} for i, p in enumerate(prompt or [])]
    if prompts_file is not None:
        from ..data.prompts import load_prompt_items

        items += load_prompt_items(prompts_file)
    if not items:
        raise SteerwatchError("no prompt given: pass prompts as arguments or --prompts-file FILE")
    check_engine(engine_name)
    check_output_path(output, "--out")
    specs = [parse_steer_spec(s) for s in (steer or [])]  # parse before loading the model: fail fast
    chat_input = [it["id"] for it in items if not isinstance(it["prompt"], str)]
    if raw and chat_input:
        raise SteerwatchError(f"--raw continues text prompts; item {chat_input[0]!r} of --prompts-file is a chat "
                              "(messages): drop --raw")
    if raw and system:
        raise SteerwatchError("--system needs a chat; --raw feeds the text as it is: drop one of them")
    if raw and steer_if and if_mode == "prompt":
        raise SteerwatchError("--if-mode prompt scores a chat prompt; use --if-mode token with --raw")
    watching = bool(watch or steer_if)
    if steer_if and not specs:
        raise SteerwatchError("--steer-if needs at least one --steer spec to apply when the detector fires")
    if watching and sample:
        raise SteerwatchError("--watch/--steer-if use greedy decoding; drop --sample")
    dets = [load_detector(p) for p in (watch or [])]  # every file read before the model loads
    cond = (Conditional(trigger=load_detector(steer_if), specs=specs, mode=cast(ConditionalMode, if_mode))
            if steer_if else None)  # Conditional checks the mode and the trigger's calibration
    opts = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=sample,
                             temperature=temperature, seed=seed, system=system, raw=bool(raw))  # checks them
    dvec = None
    if specs and distress is not None:
        from ..vector import load_vector

        dvec = load_vector(distress)
    loaded = load(model, device=device, dtype=dtype, layers_path=layers_path)
    if raw is None:  # a model without a chat template continues text, unless the input asks for a chat
        raw = (not loaded.has_chat_template and not chat_input and not system
               and not (steer_if and if_mode == "prompt"))
        if raw:
            note(f"{loaded.name} has no chat template: each prompt is continued as raw text (--chat wraps it as "
                 "User:/Assistant:)")
    from ..vector import check_residual_norm

    for spec in specs:
        spec.vector.check_model(loaded, force=force)
        check_residual_norm(spec.vector, loaded)
    if specs:
        _guard(loaded, specs, dvec, acknowledge_distress)
    prompts = [it["prompt"] for it in items]
    opts = replace(opts, raw=raw)
    runner = make_engine(loaded, engine_name)
    try:
        gens = runner.generate(prompts, opts, steer=None if cond else (specs or None), watch=dets, conditional=cond,
                               force=force, progress=True)
        base = None
        if compare and specs:
            base = [g.text for g in runner.generate(prompts, opts, force=force, progress=True)]
    finally:
        close = getattr(runner, "close", None)
        if close is not None:  # the vLLM engine's processes
            close()
    watched = gens if watching else None
    steered = [g.text for g in gens]
    incoherent = incoherence_warnings(steered, steered=bool(specs))
    rows: list[dict[str, Any]] = []
    for k, it in enumerate(items):
        row = {"id": it["id"], "prompt": it["prompt"], "steering": [s.describe() for s in specs],
               "mode": "raw" if raw else "chat", "output": steered[k], "incoherent": incoherent[k][0]}
        if base is not None:
            row["unsteered_output"] = base[k]
        if watched is not None:
            w = watched[k]
            row.update(scores=w.response, flags=w.flags, token_scores=w.scores, rescored=w.rescored)
            if steer_if:
                row.update(conditional=if_mode, triggered_at=w.triggered_at)
        rows.append(row)
    for reasons, message in incoherent:
        if reasons:
            console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(rows)} rows to {output}")
        return

    if base is not None:
        table = Table("prompt", "unsteered", "steered: " + ", ".join(r for r in rows[0]["steering"]), show_lines=True)
        for row in rows:
            table.add_row(str(row["prompt"]), row["unsteered_output"], row["output"])
        out.print(table)
    else:
        for row in rows:
            if len(rows) > 1:
                out.print(f"> {row['prompt']}", style="bold", highlight=False)
            out.print(row["output"], highlight=False)
    if watched is not None:
        wt = Table("prompt", *[f"{n} score" for n in (rows[0]["scores"] or {})], "flags",
                   *(["steering fired at token"] if steer_if else []), title="watch")
        for row in rows:
            wt.add_row(str(row["prompt"])[:40], *[("-" if v is None else f"{v:.3f}") for v in row["scores"].values()],
                       ", ".join(row["flags"]) or "-",
                       *([("-" if row["triggered_at"] is None else str(row["triggered_at"]))] if steer_if else []))
        out.print(wt)


WORKING_DOSES = "working doses on the embedded model are 0.02-0.04 (docs/steering.md)"


def incoherence_warnings(texts: list[str], *, steered: bool) -> list[tuple[list[str], str]]:
    """Per answer: the reasons its text looks incoherent (:func:`steerwatch.watch.quality.incoherence`)
    and the one-line warning to print (empty reasons: nothing to print)."""
    from ..watch.quality import incoherence

    res = []
    for k, text in enumerate(texts):
        reasons = incoherence(text)
        hint = f": the steering strength may be too high; {WORKING_DOSES}" if steered else ""
        res.append((reasons, f"answer {k + 1} looks incoherent ({'; '.join(reasons)}){hint}" if reasons else ""))
    return res


def _guard(loaded: Any, specs: list[Any], distress: Any, acknowledge: str | None) -> None:
    """The policy guard's distress check, as the server applies it to a request's steering: above the
    bound it refuses unless acknowledged (then it warns, quoting the reason)."""
    from rich.text import Text

    from ..errors import SteerwatchError
    from ..policy.guard import check_request

    if distress is not None:  # the --distress vector, read before the model loaded
        dvec = distress
        dvec.check_model(loaded)
    else:
        from ..policy.distress import builtin_distress

        dvec, _ = builtin_distress(loaded, progress=True, log=note)
    ack = acknowledge.strip() if acknowledge and acknowledge.strip() else None
    row = check_request(specs, dvec, acknowledge=ack, subject="--steer")
    if row is None:
        return
    if row.level == "error":
        raise SteerwatchError(f"the policy guard refuses this steering: {row.message}. Lower the strength, or "
                              "state why it is needed: --acknowledge-distress \"<reason>\" (docs/serve-guard.md)")
    console.print(Text.assemble(("warning:", "yellow"), " ", row.message), highlight=False)
