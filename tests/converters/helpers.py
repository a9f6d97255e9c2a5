"""Shared constants and helpers of the converter tests."""

from __future__ import annotations

import contextlib
import io

CALIBRATION_COUNT = 8  # far below the release floor of 200: the tiny models only need the code path
CHECK_COUNT = 16
# Random weights are no quantization benchmark (near-zero logits flip under any rounding), so the int8 tier is
# relaxed for the tiny models; fp32 and fp16 keep the release targets.
TINY_INT8_TARGETS = (
    "segmenter.int8.iou_mean=0.5",
    "embedder.int8.cosine_mean=0.95",
    "embedder.int8.cosine_min=0.9",
    "embedder.int8.recall1_drop_points=none",
)


class Capture:
    """stdout/stderr of an in-process CLI call (capsys is function-scoped; this fixture is session-scoped)."""

    def __enter__(self) -> Capture:
        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()
