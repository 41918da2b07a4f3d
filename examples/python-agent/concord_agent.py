"""A minimal Concord agent runtime for Python, on nats-py and nothing else.

It speaks the wire protocol of docs/PROTOCOL.md ("Registry: joining as an
agent") in JSON. Give :func:`run` one async handler per capability::

    async def shout(task: Task) -> Any:
        return {"text": str(task.payload).upper()}

    sys.exit(run({"shout": shout}, name="shouter", version="1.0.0"))

What the runtime does, in order:

1. connects to NATS, subscribes to ``<root>.agent.<id>.tasks`` and
   ``<root>.agent.<id>.cancel``, registers on ``<root>.registry.register``
   and prints ``ready <id>`` on stdout (the only thing it prints there);
   with an ed25519 key (``--key-file``, or one made for the process when the
   id is generated) the registration, every heartbeat and the
   deregistration are signed (PROTOCOL.md, "Signatures");
2. heartbeats on ``<root>.registry.heartbeat`` with the real number of
   running tasks, registering again when the registry answers ``NOT_FOUND``
   and stopping (without deregistering) on ``AGENT_REMOVED``;
3. runs at most ``--max-concurrency`` tasks at once (an asyncio.Semaphore):
   further assignments wait in the subscription until a slot frees up. Each
   assignment gets one ``AgentResult`` reply: the handler's return value as
   ``output``, or an ``error`` from the :class:`TaskFailure` it raised;
4. on SIGTERM or SIGINT stops taking tasks (buffered ones are handed back
   with a retryable ``agent_shutdown`` error), lets running ones finish for
   ``--shutdown-grace`` seconds (a second signal cuts that short), hands back
   the rest, deregisters, drains the connection and exits 0.

Logs go to stderr. Python 3.9 or newer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

try:
    import nats.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "concord-agent: error: nats-py is not installed; "
        "pip install -r examples/python-agent/requirements.txt "
        "(or use the local stack's venv: .local/venv/bin/python)\n"
    )
    sys.exit(1)

try:
    from nacl.signing import SigningKey
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "concord-agent: error: PyNaCl is not installed (ed25519 signatures); "
        "pip install -r examples/python-agent/requirements.txt "
        "(or use the local stack's venv: .local/venv/bin/python)\n"
    )
    sys.exit(1)

JSON = "application/json"
# Request headers echoed on the reply, so the caller's trace goes on.
TRACE_HEADERS = ("traceparent", "tracestate")

# Task error codes the runtime uses (the same as the Rust SDK's).
UNSUPPORTED_CAPABILITY = "unsupported_capability"
AGENT_SHUTDOWN = "agent_shutdown"
AGENT_ERROR = "agent_error"
CANCELLED = "cancelled"

# Platform error codes and their status (PROTOCOL.md, "Error replies").
STATUS = {
    "INVALID_ARGUMENT": 400,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "AGENT_REMOVED": 410,
    "UNSUPPORTED_CONTENT_TYPE": 415,
    "INTERNAL": 500,
    "ERROR_CODE_UNAVAILABLE": 503,
    "TIMEOUT": 504,
}
# Registry errors worth retrying (the others are refusals).
TRANSIENT = ("ERROR_CODE_UNAVAILABLE", "TIMEOUT", "INTERNAL")

AGENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

log = logging.getLogger("concord-agent")


# --------------------------------------------------------------------------
# Protocol: pure functions, no I/O
# --------------------------------------------------------------------------


class RequestError(Exception):
    """A request refused outright (answered with an error reply), or a
    service's error reply as the caller sees it."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        return STATUS.get(self.code, 500)


class TaskFailure(Exception):
    """Raise it from a handler to fail the attempt; ``retryable`` says whether
    another attempt (maybe on another agent) may succeed."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "retryable": self.retryable}
        if self.code:
            error["code"] = self.code
        return error


@dataclass(frozen=True)
class Assignment:
    """A ``TaskAssignment``: one attempt of one task."""

    task_id: str
    attempt: int
    capability: str
    payload: Any
    lease_ms: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.attempt)


# Signatures (PROTOCOL.md, "Signatures"): the purposes and headers.
SIGNATURE_SCHEME = "concord-signature-v1"
PURPOSE_REGISTER = "registry.register"
PURPOSE_HEARTBEAT = "registry.heartbeat"
PURPOSE_DEREGISTER = "registry.deregister"


def canonical(purpose: str, signer: str, signed_at_ms: int, payload: bytes) -> bytes:
    """The text an agent signs: five lines, each ended by a line feed."""
    digest = hashlib.sha256(payload).hexdigest()
    return f"{SIGNATURE_SCHEME}\n{purpose}\n{signer}\n{signed_at_ms}\n{digest}\n".encode()


def public_key_base64(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def signature_headers(key: SigningKey, purpose: str, signer: str, payload: bytes, signed_at_ms: int) -> dict[str, str]:
    """The three headers that carry the signature of ``payload``."""
    signature = key.sign(canonical(purpose, signer, signed_at_ms, payload)).signature
    return {
        "Concord-Signer": signer,
        "Concord-Signed-At": str(signed_at_ms),
        "Concord-Signature": base64.b64encode(signature).decode(),
    }


def load_or_create_key(path: str) -> SigningKey:
    """The key kept in ``path`` (its base64 seed on one line), made (mode
    0600) when the file does not exist: the same format as the Rust SDK's."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except FileNotFoundError:
        key = SigningKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(base64.b64encode(bytes(key)).decode() + "\n")
        return key
    try:
        seed = base64.b64decode(text, validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ValueError(f"key file {path}: must hold standard base64 of a 32-byte ed25519 seed")
    return SigningKey(seed)


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header's value, whatever the case of its name."""
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def check_content_type(headers: Mapping[str, str] | None) -> None:
    """This runtime speaks JSON only: no ``Content-Type``, or ``application/json``."""
    value = (header(headers, "Content-Type") or "").strip()
    if value and value.split(";", 1)[0].strip().lower() != JSON:
        raise RequestError("UNSUPPORTED_CONTENT_TYPE", f"this agent speaks {JSON} only, got Content-Type {value!r}")


def decode_object(data: bytes) -> dict[str, Any]:
    """The body as one JSON object, or an ``INVALID_ARGUMENT`` error."""
    try:
        body = json.loads(data)
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        raise RequestError("INVALID_ARGUMENT", f"invalid JSON: {error}") from None
    if not isinstance(body, dict):
        raise RequestError("INVALID_ARGUMENT", "the body must be one JSON object")
    return body


def _field(body: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Proto3 JSON accepts the lowerCamelCase and the snake_case name."""
    return body[camel] if camel in body else body.get(snake)


def _uint(value: Any, name: str) -> int:
    """A proto3 JSON unsigned integer: a number, or a string (64-bit fields)."""
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    raise RequestError("INVALID_ARGUMENT", f"{name}: expected an unsigned integer, got {value!r}", name)


def is_subject_token(value: str) -> bool:
    return bool(value) and not any(c.isspace() or c in ".*>" for c in value)


def decode_assignment(data: bytes, headers: Mapping[str, str] | None = None) -> Assignment:
    """Parses a ``TaskAssignment``; unknown fields are ignored (forward compatible)."""
    check_content_type(headers)
    body = decode_object(data)
    task_id = _field(body, "taskId", "task_id")
    if not isinstance(task_id, str) or not is_subject_token(task_id):
        raise RequestError(
            "INVALID_ARGUMENT", f"taskId: must be a non-empty NATS subject token, got {task_id!r}", "taskId"
        )
    capability = body.get("capability") or ""
    if not isinstance(capability, str):
        raise RequestError("INVALID_ARGUMENT", "capability: expected a string", "capability")
    labels = body.get("labels") or {}
    if not isinstance(labels, dict):
        raise RequestError("INVALID_ARGUMENT", "labels: expected an object", "labels")
    return Assignment(
        task_id=task_id,
        attempt=_uint(body.get("attempt"), "attempt"),
        capability=capability,
        payload=body.get("payload"),
        lease_ms=_uint(_field(body, "leaseMs", "lease_ms"), "leaseMs"),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def agent_result(
    assignment: Assignment, agent_id: str, *, output: Any = None, failure: TaskFailure | None = None
) -> dict[str, Any]:
    """An ``AgentResult``: exactly one of ``output`` and ``error``."""
    result: dict[str, Any] = {"taskId": assignment.task_id, "attempt": assignment.attempt, "agentId": agent_id}
    if failure is not None:
        result["error"] = failure.to_json()
    else:
        result["output"] = output
    return result


def error_reply(error: RequestError) -> tuple[bytes, dict[str, str]]:
    """An error reply: the ``Nats-Service-Error*`` headers and an ``ErrorReply`` body."""
    body: dict[str, Any] = {"code": error.code, "message": error.message, "status": error.status}
    if error.field:
        body["field"] = error.field
    headers = {
        "Content-Type": JSON,
        "Nats-Service-Error": " ".join(error.message.split()),  # one line
        "Nats-Service-Error-Code": str(error.status),
        "Concord-Error-Code": error.code,
    }
    return encode(body), headers


def read_reply(data: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """A service's reply body, or the :class:`RequestError` its error reply carries."""
    if header(headers, "Nats-Service-Error-Code") is not None:
        try:
            body = json.loads(data) if data else {}
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        code = header(headers, "Concord-Error-Code") or body.get("code") or "INTERNAL"
        message = body.get("message") or header(headers, "Nats-Service-Error") or "error"
        raise RequestError(str(code), str(message), body.get("field"))
    return decode_object(data) if data else {}


# --------------------------------------------------------------------------
# Configuration: flags, each defaulting to a CONCORD_* environment variable
# --------------------------------------------------------------------------


@dataclass
class Config:
    nats_url: str
    nats_creds: str | None
    connect_timeout: float
    subject_root: str
    agent_id: str
    name: str
    max_concurrency: int
    heartbeat_interval: float | None  # None: the registry's interval
    shutdown_grace: float
    labels: dict[str, str]
    log_level: str
    # Signs the registry requests; None: they go unsigned.
    key: SigningKey | None = None

    def subject(self, suffix: str) -> str:
        return f"{self.subject_root}.{suffix}"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


LOG_LEVELS = ("debug", "info", "warning", "error")


def _env_log_level() -> str:
    # CONCORD_LOG may be a Rust tracing filter ("info,concord=debug"): keep what fits.
    value = _env("CONCORD_LOG", "info").strip().lower()
    value = "warning" if value == "warn" else value
    return value if value in LOG_LEVELS else "info"


def _concurrency(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be within 1..10000, got {value}")
    return value


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.strip().partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def parse_config(argv: Sequence[str] | None = None, *, name: str = "python agent") -> Config:
    # String defaults go through `type` like flags do, so a bad environment
    # variable is reported the same way as a bad flag.
    p = argparse.ArgumentParser(description=f"{name}: a Concord agent in Python (nats-py).")
    p.add_argument(
        "--nats-url",
        default=_env("CONCORD_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server URL [CONCORD_NATS_URL, default %(default)s]",
    )
    p.add_argument(
        "--nats-creds",
        default=os.environ.get("CONCORD_NATS_CREDS") or None,
        help="NATS credentials file [CONCORD_NATS_CREDS]",
    )
    p.add_argument(
        "--nats-connect-timeout",
        type=float,
        default=_env("CONCORD_NATS_CONNECT_TIMEOUT", "5"),
        help="seconds to wait for the first connection [CONCORD_NATS_CONNECT_TIMEOUT, default %(default)s]",
    )
    p.add_argument(
        "--subject-root",
        default=_env("CONCORD_SUBJECT_ROOT", "concord"),
        help="root of every Concord subject [CONCORD_SUBJECT_ROOT, default %(default)s]",
    )
    p.add_argument(
        "--agent-id",
        default=_env("CONCORD_AGENT_ID", ""),
        help="letters, digits, '-', '_', at most 64 [CONCORD_AGENT_ID, default py-<random hex>]",
    )
    p.add_argument(
        "--key-file",
        default=_env("CONCORD_AGENT_KEY_FILE", ""),
        help="file with the agent's ed25519 key, made when absent [CONCORD_AGENT_KEY_FILE]; "
        "without it a generated id gets a key for this process and a given id goes unsigned",
    )
    p.add_argument(
        "--agent-name",
        default=_env("CONCORD_AGENT_NAME", name),
        help="display name [CONCORD_AGENT_NAME, default %(default)s]",
    )
    p.add_argument(
        "--max-concurrency",
        type=_concurrency,
        default=_env("CONCORD_AGENT_MAX_CONCURRENCY", "4"),
        help="most tasks run at once [CONCORD_AGENT_MAX_CONCURRENCY, default %(default)s]",
    )
    p.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        default=_env("CONCORD_AGENT_HEARTBEAT_INTERVAL_MS", "0"),
        help="between heartbeats; 0: the registry's interval [CONCORD_AGENT_HEARTBEAT_INTERVAL_MS]",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=_env("CONCORD_SHUTDOWN_GRACE", "10"),
        help="seconds running tasks get to finish on shutdown [CONCORD_SHUTDOWN_GRACE, default %(default)s]",
    )
    p.add_argument(
        "--label",
        action="append",
        type=_label,
        default=None,
        help="key=value, repeatable [CONCORD_AGENT_LABELS, comma-separated]; lang=python is added",
    )
    p.add_argument(
        "--log-level",
        default=_env_log_level(),
        choices=LOG_LEVELS,
        help="[CONCORD_LOG when it is one of these, else info]",
    )
    args = p.parse_args(argv)

    generated_id = not args.agent_id
    if generated_id:
        args.agent_id = f"py-{secrets.token_hex(6)}"
    if not AGENT_ID.match(args.agent_id):
        p.error(f"--agent-id {args.agent_id!r}: letters, digits, '-' and '_' only, 1 to 64 of them")
    if not all(is_subject_token(token) for token in args.subject_root.split(".")):
        p.error(f"--subject-root {args.subject_root!r}: dot-separated tokens without spaces, '*' or '>'")
    if args.label is None:
        env_labels = os.environ.get("CONCORD_AGENT_LABELS", "")
        try:
            args.label = [_label(item) for item in env_labels.split(",") if item.strip()]
        except argparse.ArgumentTypeError as error:
            p.error(f"CONCORD_AGENT_LABELS: {error}")
    key = None
    if args.key_file:
        try:
            key = load_or_create_key(args.key_file)
        except (OSError, ValueError) as error:
            p.error(f"--key-file: {error}")
    elif generated_id:
        key = SigningKey.generate()
    return Config(
        key=key,
        nats_url=args.nats_url,
        nats_creds=args.nats_creds,
        connect_timeout=args.nats_connect_timeout,
        subject_root=args.subject_root,
        agent_id=args.agent_id,
        name=args.agent_name,
        max_concurrency=args.max_concurrency,
        heartbeat_interval=args.heartbeat_interval_ms / 1000 if args.heartbeat_interval_ms > 0 else None,
        shutdown_grace=max(args.shutdown_grace, 0.0),
        labels={"lang": "python", **dict(args.label)},
        log_level=args.log_level,
    )


# --------------------------------------------------------------------------
# The runtime
# --------------------------------------------------------------------------


class Task:
    """One attempt, as a handler sees it."""

    def __init__(self, assignment: Assignment, runtime: AgentRuntime) -> None:
        self.id = assignment.task_id
        self.attempt = assignment.attempt
        self.capability = assignment.capability
        self.payload = assignment.payload
        self.labels = assignment.labels
        self.lease_ms = assignment.lease_ms
        self._runtime = runtime

    async def progress(self, fraction: float, message: str = "") -> None:
        """Reports progress on ``<root>.tasks.progress.<task id>``; it also
        renews the attempt's lease, so long tasks should report within it."""
        report = {
            "taskId": self.id,
            "attempt": self.attempt,
            "agentId": self._runtime.id,
            "fraction": min(max(fraction, 0.0), 1.0),
            "message": message,
        }
        await self._runtime.nc.publish(
            self._runtime.config.subject(f"tasks.progress.{self.id}"), encode(report), headers={"Content-Type": JSON}
        )


Handler = Callable[[Task], Awaitable[Any]]


class Fatal(Exception):
    """Ends the agent with exit code 1 (cannot connect, registration refused)."""


@dataclass
class Running:
    """A running attempt, and why it was cancelled if it was."""

    work: asyncio.Future[Any]
    cancel_reason: str | None = None  # CANCELLED or AGENT_SHUTDOWN


class AgentRuntime:
    def __init__(self, config: Config, handlers: Mapping[str, Handler], version: str) -> None:
        self.config = config
        self.handlers = dict(handlers)
        self.version = version
        self.id = config.agent_id
        self.nc = Client()
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.running: dict[tuple[str, int], Running] = {}
        self.runners: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()  # first signal: take no more work
        self.hurry = asyncio.Event()  # second signal: do not wait for running tasks
        self.beat_now = asyncio.Event()
        self.interval = config.heartbeat_interval or 1.0
        self.heartbeat_failing = False
        self.closing = False
        self.removed = False  # an operator removed the agent: no deregistration

    # -- lifecycle ---------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set():
            log.warning("%s again: handing back running tasks now", name)
            self.hurry.set()
        else:
            log.info("%s: shutting down gracefully", name)
            self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        await self.connect()
        try:
            return await self.serve()
        except Fatal:
            self.closing = True
            await self.nc.close()
            raise

    async def connect(self) -> None:
        last_error: list[Exception] = []

        async def on_error(error: Exception) -> None:
            last_error[:] = [error]
            log.debug("NATS: %s", error)

        async def on_disconnected() -> None:
            if not self.closing:
                log.warning("disconnected from NATS; reconnecting")

        async def on_reconnected() -> None:
            log.info("reconnected to NATS")

        try:
            # With max_reconnect_attempts=-1 nats-py also retries the first
            # connection forever: bound that one.
            await asyncio.wait_for(
                self.nc.connect(
                    servers=[self.config.nats_url],
                    name=f"{self.config.name} ({self.id})",
                    user_credentials=self.config.nats_creds,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    connect_timeout=max(1, int(self.config.connect_timeout)),
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                ),
                timeout=self.config.connect_timeout + 1,
            )
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as error:
            reason = str(error) or str(last_error[0] if last_error else "") or "no answer"
            raise Fatal(
                f"cannot connect to NATS at {self.config.nats_url}: {reason}; "
                "check --nats-url / CONCORD_NATS_URL and that nats-server is running"
            ) from None

    async def serve(self) -> int:
        tasks_sub = await self.nc.subscribe(self.config.subject(f"agent.{self.id}.tasks"), cb=self.on_assignment)
        cancel_sub = await self.nc.subscribe(self.config.subject(f"agent.{self.id}.cancel"), cb=self.on_cancel)
        await self.nc.flush()
        if self.config.key is None:
            log.warning("no key (--key-file): registry requests go unsigned and anyone could act as %s", self.id)
        if await self.register_until_done():
            print(f"ready {self.id}", flush=True)
            log.info(
                "agent %s ready: capabilities %s, at most %d tasks at once, subject root %r",
                self.id,
                ", ".join(sorted(self.handlers)),
                self.config.max_concurrency,
                self.config.subject_root,
            )
        heartbeats = asyncio.create_task(self.heartbeat_loop())
        await self.stopping.wait()

        # 1. Take no more work; what is buffered in the subscription is handed back.
        self.beat_now.set()  # capacity 0, at once
        try:
            await tasks_sub.drain()  # type: ignore[no-untyped-call]
        except nats.errors.Error as error:
            log.warning("could not drain the task subscription: %s", error)
        # 2. Let running tasks finish within the grace period; hand back the rest.
        await self.wait_for_running()
        # 3. Deregister; no heartbeat may follow, or it would register again.
        heartbeats.cancel()
        await asyncio.gather(heartbeats, return_exceptions=True)
        if not self.removed:
            await self.deregister()
        with contextlib.suppress(nats.errors.Error):
            await cancel_sub.unsubscribe()
        self.closing = True
        try:
            await self.nc.drain()
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            log.warning("could not drain the NATS connection (%s); closing it", error)
            await self.nc.close()
        log.info("agent %s stopped", self.id)
        return 0

    # -- registry ----------------------------------------------------------

    async def request(self, operation: str, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """A registry request, signed when the agent has a key; transport
        failures are ``RequestError``s too."""
        subject = self.config.subject(f"registry.{operation}")
        data = encode(body)
        headers = {"Content-Type": JSON}
        if self.config.key is not None:
            now_ms = int(time.time() * 1000)
            headers.update(signature_headers(self.config.key, f"registry.{operation}", self.id, data, now_ms))
        try:
            msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise RequestError("ERROR_CODE_UNAVAILABLE", f"no registry answers on {subject}") from None
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            raise RequestError("TIMEOUT", f"no reply on {subject} within {timeout:g}s") from None
        except nats.errors.Error as error:
            raise RequestError("ERROR_CODE_UNAVAILABLE", f"request on {subject} failed: {error}") from None
        return read_reply(msg.data, msg.headers)

    async def register(self) -> None:
        registration = {
            "id": self.id,
            "name": self.config.name,
            "capabilities": [{"name": name, "level": 1.0} for name in sorted(self.handlers)],
            "maxConcurrency": self.config.max_concurrency,
            "version": self.version,
            "labels": self.config.labels,
        }
        if self.config.key is not None:
            registration["publicKey"] = public_key_base64(self.config.key)
        reply = await self.request("register", registration, timeout=5.0)
        record = reply.get("agent") or {}
        log.info("registered (%s, revision %s)", "new" if reply.get("created") else "updated", record.get("revision"))

    async def register_until_done(self) -> bool:
        """Registers, retrying while the registry is unreachable; False if stopped first."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.register()
                return True
            except RequestError as error:
                if error.code not in TRANSIENT:
                    where = f" (field {error.field})" if error.field else ""
                    raise Fatal(f"registration refused: {error.code}{where}: {error.message}") from None
                log.warning("cannot register yet (%s); retrying in %.1fs", error.message, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
            delay = min(delay * 2, 5.0)
        return False

    async def heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.beat_now.wait(), timeout=self.interval)
            self.beat_now.clear()
            await self.heartbeat()

    async def heartbeat(self) -> None:
        beat = {
            "agentId": self.id,
            "inFlight": len(self.running),
            "capacity": 0 if self.stopping.is_set() else self.config.max_concurrency,
            "health": "HEALTHY",
        }
        try:
            ack = await self.request("heartbeat", beat, timeout=max(self.interval, 1.0))
        except RequestError as error:
            if error.code == "NOT_FOUND":
                if not self.stopping.is_set():
                    log.warning("the registry does not know this agent (%s): registering again", error.message)
                    with contextlib.suppress(RequestError):
                        await self.register()
            elif error.code == "AGENT_REMOVED":
                if not self.stopping.is_set():
                    log.warning("removed by an operator (%s): shutting down", error.message)
                    self.removed = True
                    self.stopping.set()
            elif not self.heartbeat_failing:
                log.warning("heartbeat failed: %s: %s (will keep trying)", error.code, error.message)
                self.heartbeat_failing = True
            return
        if self.heartbeat_failing:
            log.info("heartbeats answered again")
            self.heartbeat_failing = False
        interval = ack.get("heartbeatIntervalSecs")
        if self.config.heartbeat_interval is None and isinstance(interval, int) and interval > 0:
            self.interval = float(interval)

    async def deregister(self) -> None:
        try:
            await self.request("deregister", {"id": self.id}, timeout=5.0)
            log.info("deregistered")
        except RequestError as error:
            if error.code == "NOT_FOUND":
                log.info("already deregistered")
            else:
                log.warning(
                    "cannot deregister (%s: %s); the registry will find this agent unavailable",
                    error.code,
                    error.message,
                )

    # -- tasks ---------------------------------------------------------------

    async def on_assignment(self, msg: Msg) -> None:
        """nats-py calls this for one message at a time, so while no slot is
        free the next assignments wait in the subscription."""
        try:
            if not await self.take_slot():
                await self.hand_back(msg)
            elif not await self.start(msg):
                self.slots.release()
        except Exception:  # one bad message must not end the subscription
            log.exception("unexpected error on a task assignment")

    async def take_slot(self) -> bool:
        """Waits for a free slot; False, holding none, once shutdown begins."""
        if self.stopping.is_set():
            return False
        acquire = asyncio.ensure_future(self.slots.acquire())
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if acquire.done() and not acquire.cancelled():
            if not self.stopping.is_set():
                return True
            self.slots.release()
            return False
        acquire.cancel()  # a slot granted meanwhile is passed on by the semaphore
        return False

    async def start(self, msg: Msg) -> bool:
        """Starts the attempt in ``msg`` (True), or answers it at once (False)."""
        try:
            assignment = decode_assignment(msg.data, msg.headers)
        except RequestError as error:
            log.info("malformed task assignment refused: %s", error.message)
            await self.reply_error(msg, error)
            return False
        handler = self.handlers.get(assignment.capability)
        if handler is None:
            failure = TaskFailure(
                f"agent {self.id} does not have capability {assignment.capability!r}",
                retryable=True,
                code=UNSUPPORTED_CAPABILITY,
            )
            log.info("task %s attempt %d refused: %s", *assignment.key, failure.message)
            await self.reply(msg, agent_result(assignment, self.id, failure=failure))
            return False
        if assignment.key in self.running:
            log.info("duplicate delivery of task %s attempt %d ignored", *assignment.key)
            return False
        work = asyncio.ensure_future(handler(Task(assignment, self)))
        self.running[assignment.key] = Running(work)
        runner = asyncio.create_task(self.finish(msg, assignment, work))
        self.runners.add(runner)
        runner.add_done_callback(self.runners.discard)
        return True

    async def finish(self, msg: Msg, assignment: Assignment, work: asyncio.Future[Any]) -> None:
        """Awaits the attempt, sends its one reply and frees its slot."""
        try:
            try:
                result = agent_result(assignment, self.id, output=await work)
            except TaskFailure as failure:
                result = agent_result(assignment, self.id, failure=failure)
            except asyncio.CancelledError:
                entry = self.running.get(assignment.key)
                if entry is not None and entry.cancel_reason == CANCELLED:
                    cancelled = TaskFailure("cancelled by request", retryable=False, code=CANCELLED)
                else:
                    cancelled = TaskFailure(
                        f"agent {self.id} shut down before the task finished", retryable=True, code=AGENT_SHUTDOWN
                    )
                result = agent_result(assignment, self.id, failure=cancelled)
            except Exception as error:  # a bug: let another attempt run elsewhere
                log.exception("task %s attempt %d: handler error", *assignment.key)
                crashed = TaskFailure(f"the agent's handler failed: {error!r}", retryable=True, code=AGENT_ERROR)
                result = agent_result(assignment, self.id, failure=crashed)
            outcome = (result["error"].get("code") or "failed") if "error" in result else "ok"
            log.info("task %s attempt %d: %s", assignment.task_id, assignment.attempt, outcome)
            await self.reply(msg, result)
        finally:
            self.running.pop(assignment.key, None)
            self.slots.release()

    async def hand_back(self, msg: Msg) -> None:
        """Answers an assignment that was not started because the agent is stopping."""
        try:
            assignment = decode_assignment(msg.data, msg.headers)
        except RequestError as error:
            await self.reply_error(msg, error)
            return
        failure = TaskFailure(
            f"agent {self.id} is shutting down and did not start the task", retryable=True, code=AGENT_SHUTDOWN
        )
        log.info("task %s attempt %d handed back (shutting down)", *assignment.key)
        await self.reply(msg, agent_result(assignment, self.id, failure=failure))

    async def wait_for_running(self) -> None:
        if self.runners:
            log.info("waiting up to %gs for %d running task(s)", self.config.shutdown_grace, len(self.runners))
            # Not asyncio.gather: cancelling that on timeout would cancel the runners.
            finished = asyncio.ensure_future(asyncio.wait(set(self.runners)))
            hurry = asyncio.ensure_future(self.hurry.wait())
            await asyncio.wait(
                {finished, hurry}, timeout=self.config.shutdown_grace, return_when=asyncio.FIRST_COMPLETED
            )
            finished.cancel()
            hurry.cancel()
        for (task_id, attempt), entry in list(self.running.items()):
            if not entry.work.done():
                log.warning("task %s attempt %d still running: handed back", task_id, attempt)
                entry.cancel_reason = AGENT_SHUTDOWN
                entry.work.cancel()
        if self.runners:
            await asyncio.gather(*self.runners, return_exceptions=True)

    async def on_cancel(self, msg: Msg) -> None:
        """``CancelTask`` → ``{}``. Idempotent: an unknown task is no error."""
        try:
            check_content_type(msg.headers)
            body = decode_object(msg.data)
            task_id = _field(body, "taskId", "task_id")
            if not isinstance(task_id, str) or not task_id:
                raise RequestError("INVALID_ARGUMENT", "taskId: must not be empty", "taskId")
        except RequestError as error:
            await self.reply_error(msg, error)
            return
        cancelled = 0
        for (running_id, _), entry in list(self.running.items()):
            if running_id == task_id and not entry.work.done():
                entry.cancel_reason = CANCELLED
                entry.work.cancel()
                cancelled += 1
        log.info("cancel of task %s (%s): %d attempt(s) cancelled", task_id, body.get("reason") or "-", cancelled)
        await self.publish_reply(msg, b"{}", {"Content-Type": JSON})

    async def reply(self, msg: Msg, result: Mapping[str, Any]) -> None:
        headers = {"Content-Type": JSON}
        for name in TRACE_HEADERS:
            value = header(msg.headers, name)
            if value:
                headers[name] = value
        await self.publish_reply(msg, encode(result), headers)

    async def reply_error(self, msg: Msg, error: RequestError) -> None:
        body, headers = error_reply(error)
        await self.publish_reply(msg, body, headers)

    async def publish_reply(self, msg: Msg, body: bytes, headers: dict[str, str]) -> None:
        # Not msg.respond(): that copies the request's headers onto the reply.
        if not msg.reply:
            return  # nobody asked for an answer
        try:
            await self.nc.publish(msg.reply, body, headers=headers)
        except nats.errors.Error as error:
            log.warning("could not send a reply: %s", error)


async def serve(handlers: Mapping[str, Handler], config: Config, version: str) -> int:
    try:
        return await AgentRuntime(config, handlers, version).run()
    except Fatal as error:
        log.error("%s", error)
        return 1


def run(handlers: Mapping[str, Handler], *, name: str, version: str, argv: Sequence[str] | None = None) -> int:
    """Parses the flags, runs the agent until SIGTERM/SIGINT; returns the exit code."""
    config = parse_config(argv, name=name)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(handlers, config, version))
