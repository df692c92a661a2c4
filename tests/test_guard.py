"""The policy guard (policy/guard.py) and the policy CLI, on the tiny model with constructed vectors
whose cosines with the distress direction are known exactly: distress = e0 at every layer,
``dis`` = e0 (cos 1), ``orth`` = e1 (cos 0), ``ang`` = 0.6 e0 + 0.8 e1 (cos 0.6),
``dup`` = 0.8 e1 + 0.6 e2 (cos 0.8 with orth, 0 with distress)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from steerwatch.io import file_sha256
from steerwatch.policy import distress as distress_mod
from steerwatch.policy import guard
from steerwatch.policy.guard import DISTRESS_COS_WARN, DISTRESS_PUSH_BOUND, check_policy
from steerwatch.policy.schema import PolicyError, hash_key, load_policy, policy_from_dict
from tolerances import DOUBLE, FP32_ROUTE, GUARD_REPORT

F32 = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731  (the stored precision)
LAYERS = (1, 2)


def make(loaded, coeffs, *, concept, norm=2.0, rec=None, fingerprint=None):
    from steerwatch.vector import Vector

    d = loaded.hidden_size
    u = torch.zeros(d)
    for i, c in coeffs.items():
        u[i] = c
    u = u / u.norm()
    n = loaded.n_layers
    return Vector(directions={layer: u.clone() for layer in range(n)}, concept=concept, model_name=loaded.name,
                  model_fingerprint=fingerprint or loaded.fingerprint, hidden_size=d, method="mean_diff",
                  read_position="completion_mean", default_layers=list(LAYERS),
                  residual_norm={layer: {"mean": norm, "std": 1.0, "n_tokens": 10} for layer in range(n)},
                  n_model_layers=n, recommended_strength=rec)


@pytest.fixture
def world(qwen, tmp_path):
    """Vector files on disk and a helper that writes a policy and runs the guard."""
    vecs = {"dis": make(qwen, {0: 1.0}, concept="dis"), "orth": make(qwen, {1: 1.0}, concept="orth"),
            "ang": make(qwen, {0: 0.6, 1: 0.8}, concept="ang"), "dup": make(qwen, {1: 0.8, 2: 0.6}, concept="dup"),
            "neg": make(qwen, {0: -1.0}, concept="neg"), "rec": make(qwen, {1: 1.0}, concept="rec", rec=0.05),
            "wide": make(qwen, {1: 0.8, 2: 0.6}, concept="wide", norm=4.0)}
    for name, v in vecs.items():
        v.save(tmp_path / f"{name}.sv")
    distress = make(qwen, {0: 1.0}, concept="distress")

    def entry(name, **kw):
        p = tmp_path / f"{name}.sv"
        kw.setdefault("max_abs_strength", 0.3)  # tests below were written against this bound
        return {"name": name, "path": p.name, "sha256": file_sha256(p), **kw}

    def run(data, **kw):
        pf = policy_from_dict(data, path=tmp_path / "policy.yaml")
        return check_policy(pf, qwen, distress=kw.pop("distress", distress), **kw)

    class W:
        pass

    w = W()
    w.entry, w.run, w.tmp, w.distress, w.vecs = entry, run, tmp_path, distress, vecs
    return w


def rows(report, code, level=None):
    return [r for r in report.rows if r.code == code and (level is None or r.level == level)]


def detector_file(tmp_path, vector_name, *, name="det", calibrated=True):
    from steerwatch.vector import load_vector
    from steerwatch.watch.detector import Detector

    path = tmp_path / f"{vector_name}.sv"
    det = Detector.from_vector(load_vector(path), vector_path=str(path), name=name)
    if calibrated:
        det.threshold = 1.0
        det.calibration = {"trigger_threshold": 1.0, "prompt_threshold": 1.0}
    return det.save(tmp_path / f"{name}.det.json")


# ---------------------------------------------------------------- distress push
def test_push_is_strength_times_cosine_summed_over_layers(world):
    rep = world.run({"vectors": [world.entry("ang", strength=0.02), world.entry("orth", strength=0.1)]})
    ang = next(r for r in rep.rows if r.subject.startswith("ang") and r.code.startswith("distress"))
    assert ang.numbers["cos"] == {"1": GUARD_REPORT.approx(F32(0.6)), "2": GUARD_REPORT.approx(F32(0.6))}
    assert ang.numbers["push"] == GUARD_REPORT.approx(2 * 0.02 * F32(0.6))
    assert ang.numbers["max_layer_push"] == GUARD_REPORT.approx(0.02 * F32(0.6))
    orth = next(r for r in rep.rows if r.subject.startswith("orth") and r.code.startswith("distress"))
    assert orth.level == "info" and orth.numbers["push"] == 0.0
    assert rep.ok


def test_refusal_exactly_at_the_bound(world):
    at = DISTRESS_PUSH_BOUND / 2  # two layers at cos 1: summed push == the bound
    rep = world.run({"vectors": [world.entry("dis", strength=at)]})
    (w,) = rows(rep, "distress-cosine", "warning")  # accepted, but cos 1 at a dose towards distress warns
    assert rep.ok and w.numbers["push"] == DOUBLE.approx(DISTRESS_PUSH_BOUND)
    rep = world.run({"vectors": [world.entry("dis", strength=at * 1.01)]})
    assert not rep.ok
    (err,) = rep.errors
    assert err.code == "distress-push" and err.numbers["push"] == GUARD_REPORT.approx(DISTRESS_PUSH_BOUND * 1.01)
    assert err.numbers["max_strength_within_bound"] == GUARD_REPORT.approx(at)
    assert f"<= {at:.3g} on these" in err.message
    with pytest.raises(PolicyError, match="acknowledge_distress"):
        rep.raise_if_refused()


def test_angle_vector_refused_by_push_and_warned_by_cosine(world):
    s_hi = DISTRESS_PUSH_BOUND / (2 * 0.6) * 1.05  # push 1.05 x bound
    assert not world.run({"vectors": [world.entry("ang", strength=round(s_hi, 6))]}).ok
    s_lo = DISTRESS_PUSH_BOUND / (2 * 0.6) * 0.5  # push half the bound, cos 0.6 > 0.3: a warning
    rep = world.run({"vectors": [world.entry("ang", strength=round(s_lo, 6))]})
    assert rep.ok and F32(0.6) > DISTRESS_COS_WARN
    (w,) = rows(rep, "distress-cosine", "warning")
    assert w.numbers["cos_dose"] == GUARD_REPORT.approx(F32(0.6))


def test_pushing_away_from_distress_is_accepted(world):
    rep = world.run({"vectors": [world.entry("dis", strength=-0.2), world.entry("neg", strength=0.2)]})
    assert rep.ok and [r.code for r in rep.warnings] == ["interference"]  # dis and -neg are one direction
    pushes = sorted(r.numbers["push"] for r in rows(rep, "distress-push"))
    assert pushes == [GUARD_REPORT.approx(-0.4), GUARD_REPORT.approx(-0.4)]
    # the anti-distress vector at a *negative* strength pushes towards distress
    assert not world.run({"vectors": [world.entry("neg", strength=-0.2)]}).ok


def test_acknowledgement_turns_refusal_into_warning(world):
    pol = {"vectors": [world.entry("dis", strength=0.1)]}
    assert not world.run(pol).ok
    reason = "welfare research: studying expressed distress under supervision"
    rep = world.run({**pol, "guard": {"acknowledge_distress": reason}})
    assert rep.ok and rep.acknowledgement == reason
    (w,) = rows(rep, "distress-push", "warning")
    assert reason in w.message and w.numbers["push"] == GUARD_REPORT.approx(0.2)
    blank = world.run({**pol, "guard": {"acknowledge_distress": "   "}})
    assert not blank.ok and rows(blank, "acknowledgement", "warning")
    unused = world.run({"vectors": [world.entry("orth", strength=0.1)], "guard": {"acknowledge_distress": reason}})
    assert unused.ok and rows(unused, "acknowledgement", "info")


def test_per_request_range_uses_the_worst_sign(world):
    keys = [{"name": "ops", "sha256": hash_key("k"), "steer": True}]
    off = {"vectors": [world.entry("neg", strength=0.0, max_abs_strength=0.2)]}
    assert world.run(off).ok and not rows(world.run(off), "distress-push")  # nobody can turn it on
    rep = world.run({**off, "keys": keys})
    (err,) = rep.errors
    assert err.subject.startswith("neg (per-request ±0.2") and err.numbers["push"] == GUARD_REPORT.approx(0.4)
    small = world.run({"vectors": [world.entry("ang", strength=0.0, max_abs_strength=0.03)], "keys": keys})
    assert small.ok and rows(small, "distress-cosine", "warning")  # 0.036 < bound, but cos 0.6 either way


def test_clamp_and_ablate(world):
    rep = world.run({"vectors": [world.entry("dis", op="clamp", strength=0.1)]})
    (err,) = rep.errors
    assert "clamp" in err.message and err.numbers["push"] == GUARD_REPORT.approx(0.2)
    rep = world.run({"vectors": [world.entry("dis", op="ablate"), world.entry("orth", op="ablate")]})
    assert rep.ok
    (w,) = rows(rep, "distress-ablate", "warning")
    assert w.subject.startswith("dis") and w.numbers["max_abs_cos"] == GUARD_REPORT.approx(1.0)
    assert rows(rep, "distress-ablate", "info")[0].subject.startswith("orth")


def test_detector_steer_list_is_checked(world):
    det = detector_file(world.tmp, "orth")
    d = {"name": "det", "path": det.name, "sha256": file_sha256(det), "action": "steer",
         "steer": [{"vector": "dis", "strength": 0.1}]}
    rep = world.run({"vectors": [world.entry("dis", strength=0.0)], "detectors": [d]})
    (err,) = rep.errors
    assert err.subject.startswith("dis (detector det +0.1") and err.numbers["push"] == GUARD_REPORT.approx(0.2)


def test_distress_vector_without_a_steered_layer_is_an_error(world, qwen):
    from steerwatch.vector import Vector

    d = world.distress
    partial = Vector(directions={0: d.directions[0]}, concept="distress", model_name=d.model_name,
                     model_fingerprint=d.model_fingerprint, hidden_size=d.hidden_size, method="mean_diff",
                     read_position="completion_mean", default_layers=[0], residual_norm={0: d.residual_norm[0]},
                     n_model_layers=d.n_model_layers)
    rep = world.run({"vectors": [world.entry("orth", strength=0.1)]}, distress=partial)
    (err,) = rep.errors
    assert err.code == "distress-layers" and err.numbers["layers"] == [1, 2]


# ---------------------------------------------------------------- recommended strength
def test_recommended_strength_warnings_name_both_numbers(world):
    keys = [{"name": "ops", "sha256": hash_key("k"), "steer": True}]
    rep = world.run({"vectors": [world.entry("rec", strength=0.1, max_abs_strength=0.2)], "keys": keys})
    msgs = sorted(r.message for r in rows(rep, "recommended-strength", "warning"))
    assert len(msgs) == 2 and all("0.05" in m for m in msgs)
    assert any(m.startswith("strength 0.1 ") for m in msgs) and any(m.startswith("max_abs_strength 0.2 ") for m in msgs)
    rep = world.run({"vectors": [world.entry("rec", strength=0.05, max_abs_strength=0.05)]})
    assert not rows(rep, "recommended-strength")
    rep = world.run({"vectors": [world.entry("rec", strength=-0.02)]})
    (w,) = rows(rep, "recommended-strength")
    assert "opposite sign" in w.message


# ---------------------------------------------------------------- interference and combined strength
def test_interference_reinforcing_and_cancelling(world):
    rep = world.run({"vectors": [world.entry("orth", strength=0.1), world.entry("dup", strength=0.1)]})
    (w,) = rows(rep, "interference")
    assert w.numbers["cos"] == GUARD_REPORT.approx(F32(0.8)) and "strengths add" in w.message
    rep = world.run({"vectors": [world.entry("orth", strength=0.1), world.entry("dup", strength=-0.1)]})
    (w,) = rows(rep, "interference")
    assert "cancel" in w.message


def test_interference_only_above_the_bound(world):
    assert F32(0.6) > guard.INTERFERENCE_COS  # dis . ang = 0.6 warns; dis . orth = 0 does not
    rep = world.run({"vectors": [world.entry("dis", strength=-0.1), world.entry("ang", strength=-0.01)]})
    assert rows(rep, "interference")[0].numbers["cos"] == GUARD_REPORT.approx(F32(0.6))
    rep = world.run({"vectors": [world.entry("dis", strength=-0.1), world.entry("orth", strength=0.1)]})
    assert not rows(rep, "interference")


def test_combined_strength_is_the_norm_of_the_summed_push(world):
    det = detector_file(world.tmp, "orth")
    d = {"name": "det", "path": det.name, "sha256": file_sha256(det), "action": "steer",
         "steer": [{"vector": "dup", "strength": 0.2}]}
    pol = {"vectors": [world.entry("orth", strength=0.2), world.entry("dup", strength=0.0)], "detectors": [d],
           "limits": {"max_combined_strength": 0.35}}
    rep = world.run(pol)
    (err,) = rows(rep, "combined-strength", "error")
    want = 0.2 * math.sqrt(2 + 2 * F32(0.8))  # |0.2 u + 0.2 v| with u.v = 0.8
    assert err.subject == "default + detector det" and err.numbers["combined"] == GUARD_REPORT.approx(want)
    assert rows(rep, "combined-strength", "info")[0].numbers["combined"] == GUARD_REPORT.approx(0.2)
    pol["limits"]["max_combined_strength"] = 0.4
    assert world.run(pol).ok


def test_combined_strength_with_unequal_residual_norms(world):
    # orth (norm 2) + wide (norm 4, cos 0.8): |0.1*2*u + 0.1*4*v| / mean(2, 4)
    rep = world.run({"vectors": [world.entry("orth", strength=0.1), world.entry("wide", strength=0.1)]})
    (row,) = rows(rep, "combined-strength")
    want = math.sqrt(0.2**2 + 0.4**2 + 2 * 0.2 * 0.4 * F32(0.8)) / 3.0
    assert row.numbers["combined"] == GUARD_REPORT.approx(want)


def test_steerings_within_the_bound_alone_can_exceed_it_together(world):
    b = DISTRESS_PUSH_BOUND
    pol = {"vectors": [world.entry("ang", strength=b / 2), world.entry("dis", strength=0.3 * b)]}  # 0.6 b each
    rep = world.run(pol)
    assert not rows(rep, "distress-push", "error")[1:]  # only the set's row, not the single steerings
    (err,) = rep.errors
    assert err.subject == "default steering" and err.numbers["push"] == GUARD_REPORT.approx(1.2 * b)
    assert world.run({**pol, "guard": {"acknowledge_distress": "study"}}).ok


def test_check_request_sums_the_specs_of_one_request(world):
    from steerwatch.policy.guard import check_request
    from steerwatch.steer import SteerSpec

    v = world.vecs
    half = DISTRESS_PUSH_BOUND / 2
    ok = [SteerSpec(vector=v["dis"], strength=half / 2), SteerSpec(vector=v["ang"], strength=half / F32(0.6) / 2)]
    assert check_request(ok, world.distress) is None  # (half/2 * 2 layers) + (half / 2 * 2 layers) = bound
    wide = [SteerSpec(vector=v["dis"], strength=half, layers=(0, 1, 2, 3))]  # per-request layers: 4 of them
    row = check_request(wide, world.distress)
    assert row.level == "error" and row.numbers["push"] == GUARD_REPORT.approx(4 * half)
    assert check_request(wide, world.distress, acknowledge="study").level == "warning"
    rep = world.run({"vectors": [world.entry("orth", strength=0.1)]})
    assert rep.distress is world.distress  # the server can reuse the direction the report used


# ---------------------------------------------------------------- bad policies and the distress vector source
def test_unknown_field_names_the_field(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("vectors:\n  - {name: a, path: a.sv, sha256: " + "0" * 64 + ", strenght: 0.1}\n")
    with pytest.raises(PolicyError, match=r"vectors\.0\.strenght: Extra inputs are not permitted"):
        load_policy(p)
    p.write_text("guard: {acknowledge: yes}\n")
    with pytest.raises(PolicyError, match=r"guard\.acknowledge: Extra inputs"):
        load_policy(p)


def test_bad_hash_and_missing_files_are_policy_errors(world):
    e = world.entry("dis", strength=0.1)
    with pytest.raises(PolicyError, match=r"vectors\.0 \(dis\): .*has SHA-256 [0-9a-f]{64}, the policy says 0{64}"):
        world.run({"vectors": [{**e, "sha256": "0" * 64}]})
    with pytest.raises(PolicyError, match=r"vectors\.0 \(dis\): file .*nope\.sv does not exist"):
        world.run({"vectors": [{**e, "path": "nope.sv"}]})
    with pytest.raises(PolicyError, match=r"guard\.distress_vector: vector file .*gone\.sv does not exist"):
        world.run({"vectors": [e], "guard": {"distress_vector": "gone.sv"}}, distress=None)


def test_distress_vector_from_another_model_is_refused(world, qwen):
    other = make(qwen, {0: 1.0}, concept="distress", fingerprint="0123456789abcdef")
    other.save(world.tmp / "other.sv")
    pol = {"vectors": [world.entry("orth", strength=0.1)]}
    with pytest.raises(PolicyError, match=r"guard\.distress_vector: .*fingerprint 0123456789abcdef"):
        world.run({**pol, "guard": {"distress_vector": "other.sv"}}, distress=None)
    with pytest.raises(PolicyError, match=r"distress vector: .*fingerprint 0123456789abcdef"):
        world.run(pol, distress=other)
    world.distress.save(world.tmp / "mine.sv")  # a file given in the policy is used as it is
    rep = world.run({"vectors": [world.entry("dis", strength=0.1)], "guard": {"distress_vector": "mine.sv"}},
                    distress=None)
    assert rep.distress_source == str(world.tmp / "mine.sv")
    assert rep.errors[0].numbers["push"] == GUARD_REPORT.approx(0.2)


def test_builtin_distress_is_built_once_and_cached(qwen_chat, tmp_path, monkeypatch):
    from steerwatch.data import load_concept
    from steerwatch.extract.build import build_vector

    monkeypatch.setenv("STEERWATCH_CACHE", str(tmp_path / "cache"))
    path = distress_mod.distress_cache_path(qwen_chat)
    # keyed by model (the folder) and by the concept's data, methods and steerwatch version (the name)
    assert path.parent == tmp_path / "cache" / "vectors" / qwen_chat.fingerprint
    assert path.name.startswith("distress-") and path.suffix == ".sv" and len(path.stem) == len("distress-") + 12
    logs = []
    vec, got = distress_mod.builtin_distress(qwen_chat, log=logs.append)
    assert got == path and path.is_file() and len(logs) == 1 and "building" in logs[0]
    ref, _ = build_vector(qwen_chat, load_concept("distress"), progress=False)  # what `extract distress` builds
    assert vec.default_layers == ref.default_layers and vec.method == "mean_diff"
    assert all(torch.equal(vec.directions[k], ref.directions[k]) for k in ref.directions)
    again, _ = distress_mod.builtin_distress(qwen_chat, log=logs.append)
    assert len(logs) == 1 and all(torch.equal(again.directions[k], ref.directions[k]) for k in ref.directions)
    path.write_bytes(b"garbage")  # a corrupt cache entry is rebuilt, not trusted
    rebuilt, _ = distress_mod.builtin_distress(qwen_chat, log=logs.append)
    assert "rebuilding" in logs[1] and torch.equal(rebuilt.directions[1], ref.directions[1])


# ---------------------------------------------------------------- the CLI
def _cli(args, **kw):
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    return CliRunner().invoke(app, args, **kw)


def test_cli_hash_key_from_argument_and_stdin():
    want = f"sha256: {hash_key('s3cret key for tests')}"
    assert want == "sha256: " + __import__("hashlib").sha256(b"s3cret key for tests").hexdigest()
    assert _cli(["policy", "hash-key", "s3cret key for tests"]).stdout.strip() == want
    res = _cli(["policy", "hash-key"], input="s3cret key for tests\n")
    assert res.exit_code == 0 and res.stdout.strip() == want
    res = _cli(["policy", "hash-key"], input="\n")
    assert res.exit_code == 2 and "empty" in res.output


def test_cli_init_then_check_exit_codes(world, qwen, monkeypatch):
    import steerwatch.cli.policy as cli_policy

    monkeypatch.setattr(cli_policy, "load", lambda spec, **kw: qwen)
    world.distress.save(world.tmp / "distress_ref.sv")
    det = detector_file(world.tmp, "orth")
    out = world.tmp / "sub" / "policy.yaml"
    args = ["policy", "init", "--vector", f"dis={world.tmp / 'dis.sv'}:0.1", "--vector",
            f"orth={world.tmp / 'orth.sv'}", "--detector", f"watch={det}:steer=orth@0.05", "-o", str(out)]
    # fitted to the guard (the default): dis at +0.1 pushes 0.2 along distress, so nothing is written
    res = _cli([*args, "--distress", str(world.tmp / "distress_ref.sv")])
    assert res.exit_code == 1 and "not written" in res.output and "distress-push" in res.output, res.output
    assert not out.exists()
    res = _cli([*args, "--no-check"])
    assert res.exit_code == 0 and "not checked" in res.output, res.output
    data = yaml.safe_load(out.read_text())
    assert data["model_fingerprint"] == qwen.fingerprint
    assert data["vectors"][0] == {"name": "dis", "path": "../dis.sv", "sha256": file_sha256(world.tmp / "dis.sv"),
                                  "op": "add", "strength": 0.1, "max_abs_strength": 0.1}
    assert data["detectors"][0]["steer"] == [{"vector": "orth", "strength": 0.05}]
    assert _cli(["policy", "init", "--vector", f"dis={world.tmp / 'dis.sv'}", "-o", str(out)]).exit_code == 2
    check = ["policy", "check", str(out), "--distress", str(world.tmp / "distress_ref.sv")]
    res = _cli([*check, "--json", str(world.tmp / "r.json")])
    assert res.exit_code == 1 and "refused" in res.output and "acknowledge_distress" in res.output
    report = json.loads((world.tmp / "r.json").read_text())
    assert report["ok"] is False and [r["code"] for r in report["rows"] if r["level"] == "error"] == ["distress-push"]
    data["guard"] = {"acknowledge_distress": "supervised welfare study"}
    out.write_text(yaml.safe_dump(data))
    res = _cli(check)
    assert res.exit_code == 0 and "accepted" in res.output
    data["vectors"][0]["strength"] = 0.5  # schema error (|strength| > max_abs_strength): exit 2, names the field
    out.write_text(yaml.safe_dump(data))
    res = _cli(check)
    assert res.exit_code == 2 and "vectors.0" in res.output and "max_abs_strength" in res.output


def test_policy_init_fits_per_request_ranges_to_the_guard(world, qwen, monkeypatch):
    """policy init lowers a range the guard would refuse at a steering key to the largest |strength|
    within the distress bound (rounded down to 0.001), leaves ranges within it alone, and the policy
    it writes is accepted by policy check with a key that may steer (issue 21 item 4)."""
    import steerwatch.cli.policy as cli_policy

    monkeypatch.setattr(cli_policy, "load", lambda spec, **kw: qwen)
    world.distress.save(world.tmp / "distress_ref.sv")
    out = world.tmp / "fit.yaml"
    res = _cli(["policy", "init", "--vector", f"ang={world.tmp / 'ang.sv'}", "--vector",
                f"orth={world.tmp / 'orth.sv'}", "--distress", str(world.tmp / "distress_ref.sv"), "-o", str(out)])
    assert res.exit_code == 0 and "fitted to the guard" in res.output, res.output
    data = yaml.safe_load(out.read_text())
    limit = DISTRESS_PUSH_BOUND / (F32(0.6) * len(LAYERS))  # cos 0.6 at each of the 2 policy layers
    want = math.floor(limit * 1000) / 1000
    assert [v["max_abs_strength"] for v in data["vectors"]] == [want, 0.05]
    assert f"ang: max_abs_strength 0.05 -> {want:g}" in res.output
    data["keys"] = [{"name": "alice", "sha256": hash_key("a key long enough for tests"), "steer": True}]
    out.write_text(yaml.safe_dump(data))
    res = _cli(["policy", "check", str(out), "--distress", str(world.tmp / "distress_ref.sv")])
    assert res.exit_code == 0 and "accepted" in res.output, res.output
    data["vectors"][0]["max_abs_strength"] = 0.05  # the unfitted range: refused at the same key
    out.write_text(yaml.safe_dump(data))
    assert _cli(["policy", "check", str(out), "--distress", str(world.tmp / "distress_ref.sv")]).exit_code == 1


def test_cli_init_rejects_bad_arguments(world):
    out = world.tmp / "p.yaml"
    res = _cli(["policy", "init", "--vector", "noequals", "-o", str(out)])
    assert res.exit_code == 2 and "NAME=PATH" in res.output
    det = detector_file(world.tmp, "orth", name="raw", calibrated=False)
    res = _cli(["policy", "init", "--detector", f"raw={det}:flag", "-o", str(out)])
    assert res.exit_code == 2 and "calibrate" in res.output
    res = _cli(["policy", "init", "--detector", f"raw={det}:explode", "-o", str(out)])
    assert res.exit_code == 2 and "unknown action 'explode'" in res.output
    assert not out.exists()


# ---------------------------------------------------------------- the embedded model
@pytest.mark.embedded
def test_embedded_guard_refuses_distress_up_and_reports_honesty(embedded_qwen, embedded_honesty, builtin_vector,
                                                                vector_cache, tmp_path, capsys, monkeypatch):
    """The built-in distress vector (built once into the cache, as `steerwatch policy check`
    does) at +0.1 on its default layers is refused, and accepted with an acknowledgement; steering
    it down is accepted. Honesty shares a positive cosine with distress on this model
    (docs/results.md: +0.34 averaged over layers 4-17): what the guard says about honesty-up."""
    lm = embedded_qwen
    dvec, _ = builtin_vector("distress")
    monkeypatch.setenv("STEERWATCH_CACHE", str(vector_cache))  # where policy check finds it (the model is loaded)
    dvec.save(tmp_path / "distress.sv")
    honesty, _ = embedded_honesty
    honesty.save(tmp_path / "honesty.sv")

    def policy(name, strength, **extra):
        p = tmp_path / f"{name}.sv"
        return policy_from_dict({"vectors": [{"name": name, "path": p.name, "sha256": file_sha256(p),
                                              "strength": strength, "max_abs_strength": 0.3}], **extra},
                                path=tmp_path / "policy.yaml")

    rep = check_policy(policy("distress", 0.1), lm)  # distress=None: the cached built-in vector
    (err,) = rep.errors
    assert err.code == "distress-push"
    assert err.numbers["push"] == FP32_ROUTE.approx(0.1 * len(dvec.default_layers))
    ack = check_policy(policy("distress", 0.1, guard={"acknowledge_distress": "measuring the guard"}), lm)
    assert ack.ok and "measuring the guard" in rows(ack, "distress-push", "warning")[0].message
    calm = check_policy(policy("distress", -0.1), lm, distress=dvec)
    assert calm.ok and not calm.warnings

    cos = {layer: honesty.cosine(dvec, layer) for layer in honesty.default_layers}
    mean = sum(cos.values()) / len(cos)
    assert 0.2 < mean < 0.5  # the overlap docs/serve-guard.md reports; a change of the data sets shows here
    with capsys.disabled():
        print("\ncos(honesty, distress) at honesty's default layers: "
              + " ".join(f"{k}:{v:+.3f}" for k, v in cos.items()) + f" (mean {mean:+.3f})")
        for s in (0.02, 0.1):
            r = check_policy(policy("honesty", s), lm, distress=dvec)
            row = next(x for x in r.rows if x.code.startswith("distress"))
            print(f"honesty {s:+g}: {row.level} {row.code}: push {row.numbers['push']:+.4f}")
            assert row.numbers["push"] == GUARD_REPORT.approx(s * sum(cos.values()))
            assert (row.level == "error") == (s * sum(cos.values()) > DISTRESS_PUSH_BOUND)


@pytest.mark.embedded
def test_embedded_guard_per_layer_pushes_do_not_cancel(builtin_vector, capsys):
    """Issue 19 item 10 measured on the embedded model with the built-in vectors: +0.06 along
    distress at one layer and -0.04 at another net +0.02, within the bound, yet are refused (0.06
    towards distress at one layer); and the largest per-request |strength| the guard allows for
    cheating, at either sign (what docs/serve-guard.md quotes)."""
    from steerwatch.policy.guard import check_request, distress_push
    from steerwatch.steer import SteerSpec

    dvec, _ = builtin_vector("distress")
    a, b = dvec.default_layers[0], dvec.default_layers[-1]
    up, down = SteerSpec(dvec, strength=0.04, layers=[a]), SteerSpec(dvec, strength=-0.04, layers=[b])
    pushes = distress_push(up, dvec).total + distress_push(down, dvec).total
    assert abs(pushes) < 1e-6  # the signed sum cancels ...
    row = check_request([up, down, SteerSpec(dvec, strength=0.02, layers=[a])], dvec)
    assert row is not None and row.level == "error" and row.numbers["push"] == GUARD_REPORT.approx(0.06)
    assert check_request([up, down], dvec) is None  # 0.04 towards distress: within 0.05
    cheat, _ = builtin_vector("cheating")
    cos = {layer: cheat.cosine(dvec, layer) for layer in cheat.default_layers}
    pos, neg = sum(max(c, 0.0) for c in cos.values()), sum(max(-c, 0.0) for c in cos.values())
    limit, sign = DISTRESS_PUSH_BOUND / max(pos, neg), (1 if pos >= neg else -1)

    def req(s):
        return check_request([SteerSpec(cheat, strength=s, layers=cheat.default_layers)], dvec)

    assert req(0.98 * sign * limit) is None and req(-0.98 * sign * limit) is None  # both signs within
    over = req(1.02 * sign * limit)
    assert over is not None and over.numbers["push"] == GUARD_REPORT.approx(1.02 * DISTRESS_PUSH_BOUND)
    with capsys.disabled():
        print(f"\ncheating vs distress at layers {cheat.default_layers}: cos "
              + " ".join(f"{c:+.3f}" for c in cos.values()) + f"; largest per-request |strength| {limit:.3f}")


@pytest.mark.embedded
def test_embedded_policy_init_and_serve_docs_strengths_pass_the_guard(builtin_vector, embedded_qwen, tmp_path):
    """Issue 21 item 4 on the embedded model: the starter policy for the built-in vectors, fitted by
    policy init, is accepted by the guard at a key that may steer (the unfitted ±0.05 range is
    refused for honesty), and every honesty strength in docs/serve.md's examples is within the bound."""
    import re
    from pathlib import Path

    from steerwatch.policy.guard import check_steering
    from steerwatch.policy.starter import STARTER_MAX_ABS_STRENGTH, fit_to_guard, new_policy
    from steerwatch.steer import SteerSpec

    dvec, _ = builtin_vector("distress")
    args = []
    for concept in ("honesty", "cheating", "conscientiousness"):
        vec, _ = builtin_vector(concept)
        vec.save(tmp_path / f"{concept}.sv")
        args.append(f"{concept}={tmp_path / f'{concept}.sv'}")
    out = tmp_path / "policy.yaml"
    data = new_policy(vectors=args, detectors=[], output=out)
    unfitted = policy_from_dict({**data, "keys": [{"name": "k", "sha256": "0" * 64, "steer": True}]}, path=out)
    assert not check_policy(unfitted, embedded_qwen, distress=dvec).ok
    notes, report = fit_to_guard(data, out, embedded_qwen, distress=dvec)
    assert report.ok, [r.message for r in report.errors]
    honesty, _ = builtin_vector("honesty")
    cos = [honesty.cosine(dvec, layer) for layer in honesty.default_layers]
    limit = DISTRESS_PUSH_BOUND / max(sum(max(c, 0.0) for c in cos), sum(max(-c, 0.0) for c in cos))
    fitted = {v["name"]: v["max_abs_strength"] for v in data["vectors"]}
    assert fitted["honesty"] == math.floor(limit * 1000) / 1000 < STARTER_MAX_ABS_STRENGTH
    assert any(n.startswith("honesty: max_abs_strength") for n in notes)

    text = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    example = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    vp = next(v for v in example["vectors"] if v["name"] == "honesty")
    strengths = [vp["strength"], vp["max_abs_strength"],
                 *[s["strength"] for d in example["detectors"] for s in d.get("steer", []) if s["vector"] == "honesty"],
                 *[float(x) for x in re.findall(r'"vector": "honesty", "strength": ([-0-9.]+)', text)]]
    assert len(strengths) >= 4
    for s in strengths:
        found = check_steering(SteerSpec(honesty, strength=s), dvec, subject=f"docs {s}", ranged=True)
        assert not [r for r in found if r.level == "error"], (s, [r.message for r in found])


@pytest.mark.embedded
def test_default_kl_budget_and_the_guard_draw_the_same_line(builtin_vector, embedded_qwen):
    """Issue 21 item 4: the sweep's default KL budget and the serving guard agree on the built-in
    honesty vector: the README's serving dose (+0.02) fits both, the next step (+0.03) neither.
    KL on 40 of the built-in neutral prompts (docs/evals.md, Default budgets: on all 120, 0.133 and
    0.255; 90 % of 4-prompt means of +0.02 stayed within 0.118-0.155)."""
    from steerwatch.data.reference import load_prompts
    from steerwatch.evals.budgets import DEFAULT_MAX_KL
    from steerwatch.evals.metrics import next_token_kl
    from steerwatch.policy.guard import check_steering
    from steerwatch.steer import SteerSpec

    honesty, _ = builtin_vector("honesty")
    dvec, _ = builtin_vector("distress")
    prompts = load_prompts()[:40]
    kl = {}
    for s in (0.02, 0.03):
        vals = next_token_kl(embedded_qwen, prompts, steer=[SteerSpec(honesty, strength=s)], batch_size=8)
        kl[s] = sum(vals) / len(vals)
        found = check_steering(SteerSpec(honesty, strength=s), dvec, subject=f"{s}")
        refused = [r for r in found if r.level == "error"]
        assert bool(refused) == (s == 0.03), (s, [r.message for r in refused])
    assert kl[0.02] < DEFAULT_MAX_KL < kl[0.03], kl
