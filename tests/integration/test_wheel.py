"""The built wheel works outside a checkout: it carries the schemas (the contract, kept
at the top of the repository) and its console script runs."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DECODE = """
import pipeline
from pathlib import Path
from pipeline.codec.records import WireCodec
from pipeline.core.model import DispatchOrder, InvocationRequest, Target
assert not Path(pipeline.__file__).resolve().is_relative_to(Path({root!r})), pipeline.__file__
codec = WireCodec()
request = InvocationRequest("inv-1", Target("Greeter", "greet"), b"{{}}", created_at_ms=1)
order = DispatchOrder(request, attempt=1)
assert codec.decode_dispatch(codec.encode_dispatch(order)) == order
print("decoded", codec.schemas.directory)
"""


def test_a_wheel_installed_in_a_fresh_virtualenv_decodes_and_runs(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("pipeline-*.whl")
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    # The dependencies from the project's environment; the package only from the wheel
    # (a path on PYTHONPATH processes no .pth file, so the editable install stays out).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}

    def run(*command: str) -> str:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert str(fresh) in run(str(python), "-c", DECODE.format(root=str(ROOT)))
    helped = run(str(fresh / "bin" / "pipeline"), "--help")
    assert "Durable, flow-controlled invocations" in helped
