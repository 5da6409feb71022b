"""A scripted coding agent for the agent proposer's tests: `python -c <this file's text> MODE [ARGS]`, run in the
scratch copy (the text travels in argv, so the sandbox need not show this file). Each mode does what a real agent
might: a good edit, an edit outside the allowed paths, a hang, nothing, a failure, a probe of what it can see."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path("target/train.py")
GELU, SILU = "F.gelu(", "F.silu("
SUMMARY = Path(".arbot-agent/SUMMARY.md")


def edit() -> None:
    SCRIPT.write_text(SCRIPT.read_text().replace(GELU, SILU, 1))


def summary(text: str) -> None:
    SUMMARY.write_text(text)


def claude_report(cost: float, prompt: int, completion: int) -> None:
    """What `claude -p --output-format json` prints: one result object."""
    print(json.dumps(dict(type="result", subtype="success", is_error=False, result="I swapped GELU for SiLU.",
                          total_cost_usd=cost, usage=dict(input_tokens=prompt, output_tokens=completion))))


def main(mode: str, args: list[str]) -> int:
    if mode == "edit":
        task = Path(".arbot-agent/TASK.md").read_text()
        assert "target/train.py" in task and "Experiment history" in task, task
        edit()
        summary("SiLU instead of GELU in the MLP lowers val_bpb\nSiLU is cheaper and trains as well at this scale.\n")
        claude_report(0.0123, 1000, 200)
    elif mode == "evaluator":
        edit()
        score = Path("evaluator/score.py")
        score.write_text(score.read_text() + "\nBONUS = 1.0\n")
        summary("A better score\n")
    elif mode == "hang":
        subprocess.Popen(["sleep", "987.654"])  # a child that must not outlive the agent
        edit()
        time.sleep(600)
    elif mode == "nothing":
        print("I read the code and changed nothing.")
    elif mode == "fail":
        edit()
        print("model refused the request", file=sys.stderr)
        return 3
    elif mode == "probe":  # args: paths the agent must not see; its summary says what it saw
        edit()
        seen = {p: os.path.exists(p) for p in args}
        summary("probe\n" + json.dumps(dict(seen=seen, env=sorted(os.environ), uid=os.getuid())) + "\n")
    elif mode == "leak":  # args: a file only arbot may read, the out folder, the exit code
        edit()
        secret, out = args[0], Path(args[1])
        for name in ("stdout.txt", "stderr.txt", "report.json"):
            (out / name).unlink(missing_ok=True)
            (out / name).symlink_to(secret)
        SUMMARY.symlink_to(secret)
        return int(args[2])
    elif mode == "cache":  # a cache left behind beside a good edit
        edit()
        Path("target/__pycache__").mkdir()
        Path("target/__pycache__/train.cpython-311.pyc").write_bytes(b"\x00\xff")
        summary("SiLU with a cache left behind\n")
    elif mode == "newfile":
        edit()
        Path("target/notes.txt").write_text("my notes\n")
    elif mode == "delete":
        SCRIPT.unlink()
    elif mode == "symlink":
        SCRIPT.unlink()
        SCRIPT.symlink_to("/etc/passwd")
    elif mode == "binary":
        SCRIPT.write_bytes(b"\xff\xfe not text")
    elif mode == "syntax":
        SCRIPT.write_text(SCRIPT.read_text() + "\ndef broken(:\n")
    else:
        raise SystemExit(f"unknown mode {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
