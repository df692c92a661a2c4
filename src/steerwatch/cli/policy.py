"""steerwatch policy: check a deployment policy with the guard, hash API keys, write a starter policy."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from .app import app
from .common import check_output_path, console, friendly, load, note, out
from .options import Device, Dtype

policy_app = typer.Typer(help="Check and write deployment policies (steerwatch serve --policy FILE).",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(policy_app, name="policy")

MIN_KEY_CHARS = 16  # steerwatch policy hash-key refuses shorter API keys
_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def report_table(report: Any):
    from rich.table import Table

    table = Table(title=f"policy guard · distress direction: {report.distress_source}", show_lines=False)
    for col in ("level", "check", "subject", "finding"):
        table.add_column(col, overflow="fold")
    for r in report.rows:
        style = _STYLE.get(r.level, "")
        table.add_row(Text(r.level, style=style), r.code, r.subject, r.message)
    return table


@policy_app.command("check")
@friendly
def check_cmd(
    file: Path = typer.Argument(..., help="The policy file (YAML)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model spec to check against (default: the "
                                                                    "policy's model:)."),
    device: Device = "auto",
    dtype: Dtype = None,
    distress: Path | None = typer.Option(None, help="A distress vector file to check against (default: the "
                                                       "policy's guard.distress_vector, else the built-in one)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
) -> None:
    """Run the policy guard. Exit 0: accepted; 1: refused; 2: invalid policy or files."""
    import json

    from ..policy.guard import check_policy
    from ..policy.resolve import resolve_policy
    from ..policy.schema import load_policy
    from ..vector import load_vector

    pf = load_policy(file)  # schema errors fail before the (slow) model load
    check_output_path(json_out, "--json")
    dvec = load_vector(distress) if distress is not None else None
    loaded = load(model or pf.policy.model, device=device, dtype=dtype)
    dep = resolve_policy(pf, loaded)
    report = check_policy(pf, loaded, distress=dvec, deployment=dep, progress=sys.stderr.isatty(),
                          log=note)
    out.print(report_table(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.as_dict(), indent=1) + "\n", encoding="utf-8")
        note(f"wrote {json_out}")
    n_err, n_warn = len(report.errors), len(report.warnings)
    if report.ok:
        console.print(Text.assemble(("accepted", "bold green"),
                                    f" · {n_warn} warning(s) · policy sha256 {report.policy_sha256[:12]}"))
        return
    console.print(Text.assemble(("refused", "bold red"), f": {n_err} error(s), {n_warn} warning(s)."))
    if any(r.code == "distress-push" for r in report.errors):
        console.print("To serve steering that pushes towards distress anyway, add the reason to the policy:\n"
                      "  guard:\n    acknowledge_distress: \"<why this deployment needs it>\"\n"
                      "(see docs/serve-guard.md). Other errors must be fixed in the policy.", highlight=False)
    raise typer.Exit(1)


@policy_app.command("hash-key")
@friendly
def hash_key_cmd(
    key: str | None = typer.Argument(None, help="The API key. Omit it to read it from stdin (keeps it out of "
                                                   "your shell history)."),
) -> None:
    """Print the sha256 line to paste into a policy's keys: entry."""
    from ..policy.schema import PolicyError, hash_key

    if key is None:
        if sys.stdin.isatty():
            import getpass

            key = getpass.getpass("API key: ")
        else:
            key = sys.stdin.read().rstrip("\r\n")
    if not key:
        raise PolicyError("the API key is empty; give it as an argument or on stdin")
    if len(key) < MIN_KEY_CHARS:
        raise PolicyError(f"the API key has {len(key)} characters; use at least {MIN_KEY_CHARS} characters (a short "
                          "key can be guessed), e.g. one made with: python -c \"import secrets; "
                          "print('sk-' + secrets.token_urlsafe(32))\"")
    if key != key.strip():
        console.print("warning: the key has leading or trailing whitespace; it is hashed as given")
    out.print(f"sha256: {hash_key(key)}", highlight=False)


@policy_app.command("init")
@friendly
def init_cmd(
    vector: list[str] | None = typer.Option(None, "--vector", help="NAME=PATH[:STRENGTH] (repeatable); strength "
                                                                       "0 = off unless a request turns it on."),
    detector: list[str] | None = typer.Option(
        None, "--detector",
        help="NAME=PATH:ACTION (repeatable); ACTION: log, flag, block or steer=VECTOR@STRENGTH[,...]."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the policy (YAML)."),
    model: str = typer.Option("default", "--model", "-m", help="Model spec the policy serves."),
    check: bool = typer.Option(True, help="Load the model and fit the policy to the guard: each per-request range "
                                          "(max_abs_strength) lowered to what the distress bound allows, and nothing "
                                          "written if the guard would refuse the policy. --no-check writes it "
                                          "unchecked (run steerwatch policy check before serving)."),
    distress: Path | None = typer.Option(None, help="A distress vector file to check against (default: the "
                                                       "built-in one)."),
    force: bool = typer.Option(False, help="Overwrite an existing file."),
    device: Device = "auto",
    dtype: Dtype = None,
) -> None:
    """Write a starter policy with the SHA-256 of every file filled in, fitted to the policy guard."""
    import yaml

    from ..policy.schema import PolicyError
    from ..policy.starter import fit_to_guard, new_policy

    if output.exists() and not force:
        raise PolicyError(f"{output} exists; pass --force to overwrite it")
    if distress is not None and not distress.is_file():
        raise PolicyError(f"--distress {distress}: no such file")
    check_output_path(output, "-o/--output")  # before the model loads to fit the policy
    data = new_policy(vectors=vector or [], detectors=detector or [], output=output, model=model)
    if check and data["vectors"]:
        from ..vector import load_vector

        dvec = load_vector(distress) if distress is not None else None
        loaded = load(model, device=device, dtype=dtype)
        notes, report = fit_to_guard(data, output, loaded, distress=dvec, progress=sys.stderr.isatty(), log=note)
        for line in notes:
            console.print("note: " + line, highlight=False)
        if not report.ok:
            out.print(report_table(report))
            console.print(Text.assemble(("not written", "bold red"), f": the guard would refuse this policy "
                                        f"({len(report.errors)} error(s) above). Lower the strengths it names, or "
                                        "write it anyway with --no-check and add guard.acknowledge_distress "
                                        "(docs/serve-guard.md)."))
            raise typer.Exit(1)
    text = ("# steerwatch deployment policy (docs/serve.md). Check it before serving:\n"
            f"#   steerwatch policy check {output}\n" + yaml.safe_dump(data, sort_keys=False))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    checked = "fitted to the guard" if check and data["vectors"] else "not checked"
    console.print(f"wrote {output} · {len(data['vectors'])} vector(s), {len(data['detectors'])} "
                  f"detector(s) · {checked} · next: steerwatch policy check {output}")
