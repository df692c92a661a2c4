"""steerwatch serve: run the OpenAI-compatible server for a deployment policy."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import check_engine, console, friendly, load, note
from .options import Device, Dtype


@app.command("serve")
@friendly
def serve_cmd(
    policy: Path = typer.Option(..., "--policy", "-p", help="The deployment policy (YAML); see docs/serve.md."),
    host: str | None = typer.Option(None, help="Bind address (default: the policy's server.host, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default: the policy's server.port, 8000)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Override the policy's model spec."),
    device: Device = "auto",
    dtype: Dtype = None,
    engine_name: str = typer.Option("hf", "--engine",
                                    help="Generation engine: 'hf' (Hugging Face, in this process) or 'vllm' "
                                         "(vLLM's continuous batching; needs vLLM installed, see docs/scale.md)."),
    kv_cache_gib: int | None = typer.Option(None, "--kv-cache-gib",
                                              help="With --engine vllm on CPU: the KV cache size in GiB."),
    tensor_parallel: int = typer.Option(1, "--tensor-parallel", help="With --engine vllm: tensor-parallel size."),
) -> None:
    """Serve a model with its policy's steering dialled in and every response watched.

    Start-up loads the model, checks every vector and detector file against the policy's SHA-256
    and the model's fingerprint, and runs the policy guard (a policy that amplifies distress is
    refused unless it carries an acknowledgement). Endpoints: /v1/models, /v1/chat/completions,
    /v1/completions (streaming or not), /v1/watch/events (admin keys), and the watch page /watch (the
    stored events as HTML for admin keys; docs/serve.md)."""
    from ..errors import SteerwatchError
    from ..policy.schema import load_policy
    from ..serve.server import build_engine, open_store, serve_forever

    check_engine(engine_name)
    options: dict[str, object] = {}
    if engine_name == "vllm":
        options = {"kv_cache_gib": kv_cache_gib, "tensor_parallel_size": tensor_parallel}
    elif kv_cache_gib is not None or tensor_parallel != 1:
        raise SteerwatchError("--kv-cache-gib and --tensor-parallel apply to --engine vllm only")
    pf = load_policy(policy)
    store = open_store(pf)  # a read-only or misplaced store fails before the (slow) model load
    spec = model or pf.policy.model
    loaded = load(spec, device=device, dtype=dtype)
    engine = build_engine(pf, loaded=loaded, log=note, store=store, backend=engine_name, backend_options=options)
    h = host or pf.policy.server.host
    p = pf.policy.server.port if port is None else port
    dep = engine.dep
    console.print(f"serving {dep.served_name} on http://{h}:{p}/v1 — policy {pf.sha256[:12]}, "
                  f"{engine_name} engine, {len(dep.vectors)} vector(s), {len(dep.detectors)} detector(s), "
                  f"default steering: {', '.join(s.describe() for s in dep.default_steering()) or 'none'}; "
                  f"events: {engine.store.url if engine.store is not None else 'not stored'}")
    try:
        serve_forever(engine, host=h, port=p)
    finally:
        engine.stop()
