#!/usr/bin/env python3
"""Sends one TaskAssignment straight to an agent and prints its AgentResult
(and any progress reports on the way), the way the dispatcher will:

    python send_task.py <agent id> '{"text": "hello"}'
    python send_task.py <agent id> '{"text": "slow", "delayMs": 2000}' --capability reverse

Uses CONCORD_NATS_URL and CONCORD_SUBJECT_ROOT like the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

import nats
import nats.errors
from nats.aio.msg import Msg


async def send(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    task_id = args.task_id or f"t-{uuid.uuid4().hex[:12]}"

    async def on_progress(msg: Msg) -> None:
        print(f"progress {msg.data.decode()}", file=sys.stderr)

    await nc.subscribe(f"{args.subject_root}.tasks.progress.{task_id}", cb=on_progress)
    assignment = {
        "taskId": task_id,
        "attempt": 1,
        "capability": args.capability,
        "payload": json.loads(args.payload),
        "leaseMs": "30000",
    }
    try:
        reply = await nc.request(
            f"{args.subject_root}.agent.{args.agent_id}.tasks",
            json.dumps(assignment).encode(),
            timeout=args.timeout,
            headers={"Content-Type": "application/json"},
        )
    except nats.errors.NoRespondersError:
        print(f"no agent {args.agent_id!r} listens under root {args.subject_root!r}", file=sys.stderr)
        return 1
    except nats.errors.TimeoutError:
        print(f"no reply within {args.timeout:g}s", file=sys.stderr)
        return 1
    finally:
        await nc.drain()
    headers = reply.headers or {}
    if "Nats-Service-Error-Code" in headers:
        print(f"refused ({headers.get('Concord-Error-Code')}): {reply.data.decode()}", file=sys.stderr)
        return 1
    print(reply.data.decode())
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("agent_id")
    p.add_argument("payload", help="the task payload, JSON")
    p.add_argument("--capability", default="reverse")
    p.add_argument("--task-id", help="default: t-<random hex>")
    p.add_argument("--timeout", type=float, default=70.0, help="seconds to wait for the result")
    p.add_argument("--nats-url", default=os.environ.get("CONCORD_NATS_URL") or "nats://127.0.0.1:4222")
    p.add_argument("--subject-root", default=os.environ.get("CONCORD_SUBJECT_ROOT") or "concord")
    return asyncio.run(send(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
