"""The shipped EfficientNet-Lite0 re-exported as a Paddle 3 PIR program (``inference.json``), for the
PIR-vs-legacy tests and benchmark: ``python -m pdserve.pipeline.efficientnet_pir LEGACY_DIR OUT_DIR``.

Paddle 3.3 cannot load a legacy program in PIR mode, nor ``paddle.jit.load`` this one under
``FLAGS_enable_pir_api=0``; so a child process with the flag reads the weights out of the legacy
program's scope, and this process builds the same network (``efficientnet_lite.py``; under a fresh
name generator its parameters get the names they had) with them and saves it under Paddle 3's default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_READ_WEIGHTS = """
import sys, numpy as np, paddle
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())
program, _, _ = paddle.static.load_inference_model(sys.argv[1], exe)
scope = paddle.static.global_scope()
state = {v.name: np.array(scope.find_var(v.name).get_tensor()) for v in program.list_vars()
         if v.persistable and v.name not in ("feed", "fetch") and scope.find_var(v.name) is not None}
np.savez(sys.argv[2], **state)
"""


def reexport(legacy_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/inference.json`` + ``inference.pdiparams``; return the program's path."""
    import numpy as np
    import paddle

    from pdserve.pipeline.efficientnet_lite import EfficientNetLite0

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "weights.npz"
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    subprocess.run([sys.executable, "-c", _READ_WEIGHTS, str(legacy_dir / "model"), str(weights)], check=True, env=env)
    state = np.load(weights)
    with paddle.utils.unique_name.guard():  # parameter names as a fresh process generates them
        net = EfficientNetLite0(num_classes=1000, with_softmax=True)
    params = {p.name: p for p in net.parameters()}
    if set(params) != set(state.files):
        raise RuntimeError(f"parameter names differ: {sorted(set(params) ^ set(state.files))[:5]}")
    for name, param in params.items():
        param.set_value(state[name])
    weights.unlink()
    net.eval()
    spec = [paddle.static.InputSpec([None, 3, 224, 224], "float32", "x")]
    paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True), str(out_dir / "inference"))
    (out_dir / "inference.pdiparams.info").unlink(missing_ok=True)
    program = out_dir / "inference.json"
    if not program.is_file():
        raise RuntimeError(f"paddle.jit.save did not write {program}: is FLAGS_enable_pir_api=0 set here?")
    return program


if __name__ == "__main__":
    print(reexport(Path(sys.argv[1]), Path(sys.argv[2])))
