#!/usr/bin/env python3
"""A Concord agent in Python with the capability ``reverse``.

The payload ``{"text": "hello"}`` gives the output ``{"text": "olleh"}``
(reversed by Unicode code point); a payload without a string ``text`` fails
the task for good (``retryable: false``, code ``bad_payload``). An optional
``"delayMs"`` (0 to 60000) makes the task take that long while it reports
progress, to watch progress, cancellation and graceful shutdown at work.

The protocol (registration, heartbeats, bounded concurrency, replies,
shutdown) is in concord_agent.py; run ``python agent.py --help`` for the
flags and their ``CONCORD_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from concord_agent import Task, TaskFailure, run

VERSION = "0.1.0"
MAX_DELAY_MS = 60_000
STEPS = 4


def reverse_text(payload: Any) -> dict[str, str]:
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        raise TaskFailure(
            'payload must be an object with a string "text", e.g. {"text": "hello"}',
            retryable=False,
            code="bad_payload",
        )
    return {"text": text[::-1]}


def delay_ms(payload: Any) -> int:
    delay = payload.get("delayMs", 0) if isinstance(payload, dict) else 0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY_MS:
        raise TaskFailure(f"delayMs must be within 0..{MAX_DELAY_MS}", retryable=False, code="bad_payload")
    return int(delay)


async def reverse(task: Task) -> dict[str, str]:
    output = reverse_text(task.payload)
    delay = delay_ms(task.payload)
    if delay:
        await task.progress(0.0, "started")
        for step in range(1, STEPS + 1):
            await asyncio.sleep(delay / 1000 / STEPS)
            await task.progress(step / STEPS, f"step {step}/{STEPS}")
    return output


if __name__ == "__main__":
    sys.exit(run({"reverse": reverse}, name="python reverse agent", version=VERSION))
