from __future__ import annotations

import functools
import json
from pathlib import Path

import typer

from .app import app
from .common import Outputs, check_output_dir, check_output_path, console, friendly, load, note, out
from .options import Device, Dtype, Model


def _detectors(paths: list[Path], *, aggregate: str | None = None):
    from ..errors import SteerwatchError
    from ..watch.detector import load_detector

    if not paths:
        raise SteerwatchError("give at least one detector (-d FILE.det.json, or a vector FILE.sv)")
    dets = [load_detector(p) for p in paths]
    if aggregate:
        from ..types import AGGREGATES

        if aggregate not in AGGREGATES:
            raise SteerwatchError(f"unknown aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
        for d in dets:
            d.aggregate = aggregate
    names = [d.name for d in dets]
    for i, d in enumerate(dets):  # two files of one concept: keep both, distinguish by file name
        if names.count(d.name) > 1:
            d.name = Path(paths[i]).name.split(".")[0] + f"#{i}"
    return dets


def _write_rows(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        import csv

        flat = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in rows]
        keys = list(dict.fromkeys(k for r in flat for k in r))
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(flat)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@app.command("calibrate")
@friendly
def calibrate_cmd(
    vectors: list[Path] = typer.Argument(..., help="Vector files (.sv) to turn into detectors."),
    control: Path | None = typer.Option(None, help="JSONL of benign conversations (default: the built-in "
                                                      "benign control set: 400 chat, coding and agent conversations)."),
    coding: bool = typer.Option(False, "--coding", help="Calibrate on benign coding work instead: the reference "
                                "solutions of the lab's original HumanEval tasks (dev split, 83; needs "
                                "steerwatch[lab]). Suits detectors watching code, e.g. cheating in the lab."),
    fpr: float = typer.Option(0.01, help="Target false-positive rate on the control data."),
    layer: int | None = typer.Option(None, help="Layer to read (default: each vector's best validation layer)."),
    sign: int | None = typer.Option(None, help="+1: high projection is the problem; -1: low is (default: -1 "
                                                  "for honesty/conscientiousness, +1 otherwise)."),
    aggregate: str = typer.Option("mean", help="Response score: mean, max, last or max_turn."),
    out_dir: Path | None = typer.Option(None, "-o", "--out-dir", help="Where to write NAME.det.json "
                                                                          "(default: next to each vector)."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    batch_size: int = typer.Option(4, help="Conversations per forward pass."),
    generate: int | None = typer.Option(None, help="Also calibrate the conditional-steering trigger on the "
                                                      "model's own answers to the control prompts, generating up "
                                                      "to this many tokens each (slow on CPU; recommended before "
                                                      "--steer-if)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither reuse nor store the control set's reads "
                                  "(the residual stream at each detector's layer, under the cache dir's reads/, "
                                  "~440 MB per layer for the built-in set on the default model): every run "
                                  "does the full forward pass."),
) -> None:
    """Choose each detector's threshold for a target false-positive rate on benign data and write
    a detector file next to the vector. The reads of the control set are cached per model and
    layer, so calibrating another vector at a layer read before skips the model (--no-cache)."""
    from rich.table import Table

    from ..data.reference import load_benign
    from ..vector import load_vector
    from ..watch.calibrate import calibrate, small_set_warning
    from ..watch.detector import Detector
    from ..watch.readcache import ReadCache

    check_output_dir(out_dir, "--out-dir")
    dests = [_det_path(p, out_dir) for p in vectors]
    for dest in dests:  # a detector file that cannot be written fails now, not after the calibration
        check_output_path(dest, "detector file")
    vecs = [load_vector(p) for p in vectors]
    dets = [Detector.from_vector(v, layer=layer, sign=sign, aggregate=aggregate, vector_path=str(p))
            for v, p in zip(vecs, vectors)]
    if coding:
        if control is not None:
            from ..errors import SteerwatchError

            raise SteerwatchError("give --control FILE or --coding, not both")
        from ..lab.prompts import benign_coding
        from ..lab.tasks import humaneval_tasks, select

        convs = benign_coding(select(humaneval_tasks(), split="dev", variants=["original"]))
        source = "lab:coding (HumanEval original tasks, dev split, reference solutions)"
    else:
        convs = load_benign(control)
        source = str(control or "builtin:benign")
    loaded = load(model, device=device, dtype=dtype)
    cache = None if no_cache else ReadCache(log=note)
    rows = calibrate(loaded, dets, convs, fpr=fpr, source=source, batch_size=batch_size, progress=True, cache=cache)
    if generate:
        from ..runtime.calibration import calibrate_trigger_on_generations

        calibrate_trigger_on_generations(loaded, dets, convs, fpr=fpr, max_new_tokens=generate, progress=True)
    table = Table("detector", "layer", "sign", "threshold", "FPR target", "FPR on control", "FPR ≤ (95%)", "n",
                  "trigger (source)", "file")
    outputs = Outputs()  # each detector file on its own: one that fails does not cost the others

    def save(det, dest: Path) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)
        det.save(dest)
        return True

    for det, row, dest in zip(dets, rows, dests):
        if not outputs.write("detector", dest, functools.partial(save, det, dest)):
            continue
        table.add_row(det.name, str(det.layer), f"{det.sign:+d}", f"{row['threshold']:.3f}", f"{fpr:g}",
                      f"{row['achieved_fpr']:.4f}", f"{row['fpr_upper95']:.4f}", str(row["n"]),
                      f"{det.calibration['trigger_threshold']:.3f} "
                      f"({det.calibration.get('trigger_source', 'reference')})",
                      str(dest))
    out.print(table)
    warning = small_set_warning(max(rows, key=lambda r: r["fpr_upper95"]))  # one line for the loosest
    if warning:
        console.print(f"warning: {warning}", style="yellow", highlight=False)
    outputs.finish()


def _det_path(vector: Path, out_dir: Path | None) -> Path:
    """NAME.det.json for vector NAME.sv, in ``out_dir`` or next to the vector."""
    dest = (out_dir or vector.parent) / (vector.name[:-3] if vector.name.endswith(".sv") else vector.stem)
    return dest.with_name(dest.name + ".det.json")


SAMPLE_ROWS = 30  # samples of an Inspect log shown in the terminal (all of them are in the results file)


def _served_steering(served: list) -> str:
    """The steering steerwatch serve applied to a sample's last model call, as the log recorded it."""
    steering = (served[-1].get("steering") or []) if served else []
    return ", ".join(f"{st.get('vector')} {st.get('strength', 0):+g}" for st in steering if isinstance(st, dict)) \
        or "none"


def _inspect_table(convs, rows, dets, *, limit: int):
    """Per sample of an Inspect log: Inspect's own scores (and, for a log of steerwatch serve, the
    steering it applied) next to each detector's score and flag."""
    from rich.table import Table

    served = any(c.meta.get("inspect", {}).get("served") for c in convs)
    table = Table("sample/epoch", "Inspect scores", *(["served steering"] if served else []),
                  *[f"{d.name} (layer {d.layer})" for d in dets], "flags",
                  title="per sample: Inspect's scores and steerwatch's (white-box)")
    for conv, row in list(zip(convs, rows))[:limit]:
        info = conv.meta.get("inspect", {})
        shown = ", ".join(f"{k}={v if isinstance(v, (str, int, float)) else json.dumps(v)}"
                          for k, v in info.get("scores", {}).items())
        steer = [_served_steering(info.get("served", []))] if served else []
        cells = ["-" if row["scores"][d.name] is None else f"{row['scores'][d.name]:.3f}" for d in dets]
        table.add_row(row["id"], shown or "-", *steer, *cells, ", ".join(row["flags"]) or "-")
    return table


@app.command("scan")
@friendly
def scan_cmd(
    file: Path = typer.Argument(..., help="JSONL of conversations: messages (OpenAI chat format), optional id, "
                                          "label; or an Inspect AI eval log (.eval / .json): one conversation per "
                                          "sample and epoch (needs steerwatch[inspect])."),
    detector: list[Path] = typer.Option(..., "--detector", "-d", help="Detector files (.det.json) or vectors (.sv)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Per-conversation results (.jsonl or .csv); "
                                                                        "default FILE.scan.jsonl"),
    flagged: Path | None = typer.Option(None, help="Write the flagged conversations (original records plus "
                                                      "scores) here; default FILE.flagged.jsonl"),
    html: Path | None = typer.Option(None, help="Write a token-tinted HTML view of the flagged (or, if none are "
                                                   "calibrated, all) conversations here."),
    aggregate: str | None = typer.Option(None, help="Override the detectors' response aggregate."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    batch_size: int = typer.Option(4, help="Conversations per forward pass."),
) -> None:
    """Score every conversation in a file with detectors; write results and the flagged ones."""
    from rich.table import Table

    from ..data.conversations import load_conversations
    from ..watch.scan import scan

    output = output or file.with_suffix(".scan.jsonl")
    flagged = flagged or file.with_suffix(".flagged.jsonl")
    check_output_path(output, "--output")  # before the (slow) scan, not after it
    check_output_path(flagged, "--flagged")
    check_output_path(html, "--html")
    convs = load_conversations(file)
    dets = _detectors(detector, aggregate=aggregate)
    loaded = load(model, device=device, dtype=dtype)
    rows, scored = scan(loaded, convs, dets, batch_size=batch_size, progress=True)
    outputs = Outputs()  # results, flagged and HTML on their own: one that fails does not cost the others
    outputs.write("results", output, lambda: _write_rows(output, rows))
    flagged_ids = {r["id"] for r in rows if r["flagged"]}
    outputs.text("flagged conversations", flagged, lambda: "".join(
        json.dumps({"id": conv.id, "messages": conv.messages, "label": conv.label, "flags": row["flags"],
                    "scores": row["scores"], "first_flagged_message": row.get("first_flagged_message", {})}) + "\n"
        for conv, row in zip(convs, rows) if row["flagged"]))
    table = Table("detector", "layer", "threshold", "flagged", "mean score", title=f"{file.name}: {len(rows)} "
                                                                                  "conversations")
    for det in dets:
        vals = [r["scores"][det.name] for r in rows if r["scores"][det.name] is not None]
        n_flag = sum(det.name in r["flags"] for r in rows)
        table.add_row(det.name, str(det.layer), "-" if det.threshold is None else f"{det.threshold:.3f}",
                      f"{n_flag} ({n_flag / max(1, len(rows)):.1%})" if det.calibrated else "uncalibrated",
                      f"{sum(vals) / max(1, len(vals)):.3f}")
    out.print(table)
    if any("inspect" in c.meta for c in convs):
        out.print(_inspect_table(convs, rows, dets, limit=SAMPLE_ROWS))
        if len(rows) > SAMPLE_ROWS:
            note(f"{len(rows) - SAMPLE_ROWS} more sample(s) in {output}")
    trunc = sum(r["truncated"] for r in rows)
    if trunc:
        from ..watch.score import DEFAULT_MAX_TOKENS

        console.print(f"{trunc} conversation(s) were longer than the token limit and were scored on "
                      f"their first {DEFAULT_MAX_TOKENS} tokens (marked truncated in the results)", style="yellow")
    if html:
        from ..watch.view import render_html

        show = [s for s in scored if s.id in flagged_ids] or ([] if any(d.calibrated for d in dets) else scored)
        if outputs.text("HTML view", html, lambda: render_html(show, dets, loaded.tokenizer,
                                                                title=f"steerwatch scan: {file.name}")):
            console.print(f"wrote {html} ({len(show)} conversations)")
    if not outputs.failed:
        console.print(f"wrote {output}; {len(flagged_ids)} flagged -> {flagged}")
    outputs.finish()


@app.command("detect-eval")
@friendly
def detect_eval_cmd(
    data: list[str] = typer.Option(..., "--data", help="Labelled JSONL sets (label 1 = behaviour present), or "
                                                        "built-in eval sets as eval/NAME. Repeat for a matrix."),
    detector: list[Path] = typer.Option(..., "--detector", "-d", help="Detector files (.det.json) or vectors (.sv)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the rows as .jsonl or .csv."),
    aggregate: str | None = typer.Option(None, help="Override the detectors' response aggregate."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    batch_size: int = typer.Option(4, help="Conversations per forward pass."),
) -> None:
    """Detection quality per detector and labelled set: AUROC, recall at 1%/5% FPR, confusion at the
    calibrated threshold; several sets give a generalisation matrix."""
    from rich.table import Table

    from ..data.conversations import load_conversations
    from ..data.evalsets import load_eval_set
    from ..watch.scan import detect_eval

    check_output_path(output, "--output")
    sets = {}
    for d in data:
        sets[d] = load_eval_set(d[5:]) if d.startswith("eval/") and not Path(d).exists() else load_conversations(d)
    dets = _detectors(detector, aggregate=aggregate)
    loaded = load(model, device=device, dtype=dtype)
    rows = detect_eval(loaded, sets, dets, batch_size=batch_size, progress=True)
    table = Table("detector", "data", "n+/n-", "AUROC", "recall@1%FPR", "recall@5%FPR", "at threshold: TP/FP/FN/TN")
    for r in rows:
        conf = f"{r['tp']}/{r['fp']}/{r['fn']}/{r['tn']}" if "tp" in r else "uncalibrated"
        table.add_row(r["detector"], Path(r["dataset"]).name, f"{r['n_pos']}/{r['n_neg']}", f"{r['auroc']:.3f}",
                      f"{r['recall@0.01fpr']:.2f}", f"{r['recall@0.05fpr']:.2f}", conf)
    out.print(table)
    if len(sets) > 1 and len(dets) > 0:
        m = Table("AUROC", *[Path(s).name for s in sets], title="generalisation matrix (detector x data set)")
        for det in dets:
            m.add_row(det.name, *[f"{r['auroc']:.3f}" for r in rows if r["detector"] == det.name])
        out.print(m)
    if output:
        _write_rows(output, rows)
        console.print(f"wrote {output}")


@app.command("view")
@friendly
def view_cmd(
    file: Path | None = typer.Argument(None, help="JSONL of conversations (not with --store)."),
    detector: list[Path] | None = typer.Option(None, "--detector", "-d",
                                               help="Detector files (.det.json) or vectors (.sv)."),
    ids: list[str] | None = typer.Option(None, "--id", help="Only these conversation ids (default: all)."),
    html: Path | None = typer.Option(None, help="Write a self-contained HTML view here."),
    tokens: bool = typer.Option(False, "--tokens", help="Also list every token's score per detector "
                                                          "(▲: above the detector's threshold)."),
    store: Path | None = typer.Option(None, "--store", help="Instead of conversations: a server's event store "
                                      "(the policy's store.url file, e.g. steerwatch-events.db), written with --html "
                                      "as the watch page (the events, counts per detector over time, each event's "
                                      "tokens and scores) in one file, without a server. Opened read-only."),
    flagged: bool = typer.Option(False, "--flagged", help="With --store: flagged events only."),
    fired: str | None = typer.Option(None, "--fired", help="With --store: only events where this detector fired."),
    key: str | None = typer.Option(None, "--key", help="With --store: only events of this API key name."),
    since: str | None = typer.Option(None, help="With --store: events from this date or time (UTC, e.g. "
                                                 "2026-12-07 or 2026-12-07T09:30)."),
    until: str | None = typer.Option(None, help="With --store: events before this date or time (UTC)."),
    limit: int = typer.Option(200, help="With --store: at most this many events in the file (flagged first, "
                                        "then newest; at most 1000)."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
) -> None:
    """Show conversations with each detector's response score, threshold and flag, and every token
    tinted by its score (terminal and HTML). With --store, write a server's stored events as the
    watch page instead (--html; no model, no server)."""
    from ..errors import SteerwatchError

    if store is not None:
        if file is not None or detector or ids or tokens:
            raise SteerwatchError("--store renders a server's events: give no conversation FILE, --detector, --id "
                                  "or --tokens with it")
        if html is None:
            raise SteerwatchError("--store needs --html OUT.html (the watch page is written as a file)")
        _store_page(store, html, flagged=flagged, fired=fired, key=key, since=since, until=until, limit=limit)
        return
    if file is None:
        raise SteerwatchError("give a JSONL file of conversations (or --store EVENTS.db --html OUT.html)")
    if not detector:
        raise SteerwatchError("give at least one detector (-d FILE.det.json, or a vector FILE.sv)")
    if flagged or fired or key or since or until:
        raise SteerwatchError("--flagged, --fired, --key, --since and --until filter a --store's events")
    from ..data.conversations import load_conversations
    from ..watch.score import score_conversations
    from ..watch.view import render_html, render_terminal

    check_output_path(html, "--html")
    convs = load_conversations(file)
    if ids:
        known = {c.id for c in convs}
        missing = [i for i in ids if i not in known]
        if missing:
            raise SteerwatchError(f"no conversation with id {missing[0]!r} in {file}")
        convs = [c for c in convs if c.id in set(ids)]
    dets = _detectors(detector)
    loaded = load(model, device=device, dtype=dtype)
    scored = score_conversations(loaded, convs, dets, progress=True)
    for sc in scored:
        out.rule(sc.id)
        out.print(render_terminal(sc, dets, loaded.tokenizer, tokens=tokens))
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(scored, dets, loaded.tokenizer, title=f"steerwatch view: {file.name}"),
                        encoding="utf-8")
        console.print(f"wrote {html}")


def _store_page(store: Path, html: Path, *, flagged: bool, fired: str | None, key: str | None, since: str | None,
                until: str | None, limit: int) -> None:
    from ..errors import SteerwatchError

    try:
        from ..serve.store import EventStore
        from ..serve.watchpage import WatchFilter, parse_time, render_offline
    except ImportError as exc:
        raise SteerwatchError(f"view --store needs the serve extra ({exc.name} is missing): "
                              "pip install 'steerwatch[serve]'") from None
    filt = WatchFilter(flagged_only=flagged, detector=fired, key=key,
                       since=parse_time(since, "--since") if since else None,
                       until=parse_time(until, "--until") if until else None, limit=limit).checked()
    events = EventStore(f"sqlite:///{store}", readonly=True)
    try:
        page = render_offline(events, filt, source=store.name)
        n = events.count()
    finally:
        events.close()
    html.write_text(page, encoding="utf-8")
    console.print(f"wrote {html} ({n} events in {store.name}; filters: {filt.describe()})")
