"""What `precision` means (nc.runs.params PRECISIONS): it applies to the training step only.

`step(precision, device)`: the context of a training step: TF32 matmuls and convolutions for tf32, bfloat16 autocast
for bf16, neither for float32; on exit the TF32 switches are what they were before. `float32()`: the context of
every eval and measurement pass: TF32 off (CUDA turns it on for convolutions by default, which would silently make
"float32" TF32), no autocast; also restored on exit. Both are re-entrant and may be entered again and again (the
loop enters the step's once per epoch). The switches are torch's global flags, set on a CPU too (where they do
nothing), so that a test can read them.
"""
from __future__ import annotations

import contextlib

import torch

_MATMUL, _CUDNN = torch.backends.cuda.matmul, torch.backends.cudnn


def flags() -> tuple[bool, bool]:
    """(TF32 for matmuls, TF32 for cuDNN convolutions) as they are now."""
    return bool(_MATMUL.allow_tf32), bool(_CUDNN.allow_tf32)


class _Scope(contextlib.ContextDecorator):
    def __init__(self, tf32: bool, autocast_device: str | None = None):
        self.tf32, self.autocast_device, self._stack = tf32, autocast_device, []

    def __enter__(self):
        autocast = (torch.autocast(self.autocast_device, dtype=torch.bfloat16)
                    if self.autocast_device is not None else contextlib.nullcontext())
        self._stack.append((flags(), autocast))
        _MATMUL.allow_tf32 = _CUDNN.allow_tf32 = self.tf32
        autocast.__enter__()
        return self

    def __exit__(self, *exc):
        (matmul, cudnn), autocast = self._stack.pop()
        autocast.__exit__(*exc)
        _MATMUL.allow_tf32, _CUDNN.allow_tf32 = matmul, cudnn
        return False


def step(precision: str, device: torch.device) -> _Scope:
    """The training step's precision: float32, tf32 (TF32 on CUDA) or bf16 (bfloat16 autocast)."""
    return _Scope(precision == "tf32", torch.device(device).type if precision == "bf16" else None)


def float32() -> _Scope:
    """Eval and measurement passes: float32 whatever the training precision."""
    return _Scope(False)
