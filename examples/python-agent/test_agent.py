"""Unit tests of the protocol functions and the reverse capability (no NATS).

    python -m unittest -v test_agent

The end-to-end test against NATS and the registry is tests/tests/python_agent.rs.
"""

from __future__ import annotations

import json
import os
import unittest
from typing import Any
from unittest import mock

from agent import delay_ms, reverse_text
import base64
import tempfile

from nacl.signing import SigningKey

from concord_agent import (
    Assignment,
    RequestError,
    TaskFailure,
    agent_result,
    canonical,
    decode_assignment,
    error_reply,
    load_or_create_key,
    parse_config,
    public_key_base64,
    read_reply,
    signature_headers,
)

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "identity", "tests", "vectors.json")


def assignment_json(**fields: Any) -> bytes:
    body: dict[str, Any] = {"taskId": "t-1", "attempt": 1, "capability": "reverse", "payload": {"text": "abc"}}
    body.update(fields)
    return json.dumps(body).encode()


class DecodeAssignment(unittest.TestCase):
    def test_proto3_json_with_64_bit_integers_as_strings(self) -> None:
        a = decode_assignment(assignment_json(leaseMs="30000", labels={"k": "v"}))
        self.assertEqual(a, Assignment("t-1", 1, "reverse", {"text": "abc"}, 30000, {"k": "v"}))

    def test_numbers_snake_case_and_unknown_fields(self) -> None:
        body = {"task_id": "t-2", "attempt": "3", "capability": "reverse", "lease_ms": 5, "future": 1}
        a = decode_assignment(json.dumps(body).encode())
        self.assertEqual((a.task_id, a.attempt, a.lease_ms, a.payload), ("t-2", 3, 5, None))

    def test_refusals_name_the_field(self) -> None:
        cases = [
            (b"not json", None),
            (b"\xff", None),
            (b"[1]", None),
            (assignment_json(taskId=""), "taskId"),
            (assignment_json(taskId="a.b"), "taskId"),
            (assignment_json(attempt=-1), "attempt"),
            (assignment_json(attempt=True), "attempt"),
            (assignment_json(leaseMs="soon"), "leaseMs"),
        ]
        for data, field in cases:
            with self.subTest(data=data), self.assertRaises(RequestError) as caught:
                decode_assignment(data)
            self.assertEqual(caught.exception.code, "INVALID_ARGUMENT")
            self.assertEqual(caught.exception.field, field)

    def test_json_only(self) -> None:
        decode_assignment(assignment_json(), {"Content-Type": "application/json; charset=utf-8"})
        with self.assertRaises(RequestError) as caught:
            decode_assignment(assignment_json(), {"content-type": "application/protobuf"})
        self.assertEqual(caught.exception.status, 415)


class Reverse(unittest.TestCase):
    def test_reverses_code_points(self) -> None:
        self.assertEqual(reverse_text({"text": "héllo 🌍"}), {"text": "🌍 olléh"})
        self.assertEqual(reverse_text({"text": ""}), {"text": ""})

    def test_bad_payload_is_permanent(self) -> None:
        for payload in [None, "abc", {"text": 3}, {"txt": "abc"}]:
            with self.subTest(payload=payload), self.assertRaises(TaskFailure) as caught:
                reverse_text(payload)
            self.assertFalse(caught.exception.retryable)
            self.assertEqual(caught.exception.code, "bad_payload")

    def test_delay(self) -> None:
        self.assertEqual(delay_ms({"text": "a"}), 0)
        self.assertEqual(delay_ms({"text": "a", "delayMs": 250}), 250)
        for bad in [-1, 60_001, "10", True]:
            with self.subTest(delay=bad), self.assertRaises(TaskFailure):
                delay_ms({"text": "a", "delayMs": bad})


class Replies(unittest.TestCase):
    a = Assignment("t-1", 2, "reverse", None)

    def test_agent_result_has_exactly_one_outcome(self) -> None:
        self.assertEqual(
            agent_result(self.a, "py-1", output={"text": "x"}),
            {"taskId": "t-1", "attempt": 2, "agentId": "py-1", "output": {"text": "x"}},
        )
        failure = TaskFailure("nope", retryable=False, code="bad_payload")
        result = agent_result(self.a, "py-1", failure=failure)
        self.assertEqual(result["error"], {"message": "nope", "retryable": False, "code": "bad_payload"})
        self.assertNotIn("output", result)
        # A null output is still an output.
        self.assertIn("output", agent_result(self.a, "py-1", output=None))

    def test_error_reply_headers_and_body(self) -> None:
        body, headers = error_reply(RequestError("INVALID_ARGUMENT", "taskId: bad\nvalue", "taskId"))
        self.assertEqual(headers["Nats-Service-Error-Code"], "400")
        self.assertEqual(headers["Concord-Error-Code"], "INVALID_ARGUMENT")
        self.assertEqual(headers["Nats-Service-Error"], "taskId: bad value")
        self.assertEqual(
            json.loads(body),
            {"code": "INVALID_ARGUMENT", "message": "taskId: bad\nvalue", "field": "taskId", "status": 400},
        )

    def test_read_reply(self) -> None:
        self.assertEqual(
            read_reply(b'{"liveness":"ALIVE"}', {"Content-Type": "application/json"}), {"liveness": "ALIVE"}
        )
        error = b'{"code":"NOT_FOUND","message":"agent a is not registered","status":404}'
        with self.assertRaises(RequestError) as caught:
            read_reply(error, {"Nats-Service-Error-Code": "404", "Concord-Error-Code": "NOT_FOUND"})
        self.assertEqual((caught.exception.code, caught.exception.message), ("NOT_FOUND", "agent a is not registered"))
        # The headers suffice when the body is not an ErrorReply.
        with self.assertRaises(RequestError) as caught:
            read_reply(b"", {"Nats-Service-Error": "down", "Nats-Service-Error-Code": "503"})
        self.assertEqual((caught.exception.code, caught.exception.message), ("INTERNAL", "down"))


class Config(unittest.TestCase):
    def test_defaults(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True):
            config = parse_config([])
        self.assertEqual(config.nats_url, "nats://127.0.0.1:4222")
        self.assertEqual(config.subject_root, "concord")
        self.assertRegex(config.agent_id, r"^py-[0-9a-f]{12}$")
        self.assertEqual(config.max_concurrency, 4)
        self.assertIsNone(config.heartbeat_interval)
        self.assertEqual(config.labels, {"lang": "python"})

    def test_environment_and_flags(self) -> None:
        env = {
            "CONCORD_NATS_URL": "nats://nats:4222",
            "CONCORD_SUBJECT_ROOT": "t1.x",
            "CONCORD_AGENT_ID": "py-e2e",
            "CONCORD_AGENT_MAX_CONCURRENCY": "2",
            "CONCORD_AGENT_LABELS": "region=eu, tier=gold",
        }
        with mock.patch.dict(os.environ, env, clear=True):
            config = parse_config([])
            self.assertEqual(
                (config.nats_url, config.subject_root, config.agent_id, config.max_concurrency),
                ("nats://nats:4222", "t1.x", "py-e2e", 2),
            )
            self.assertEqual(config.labels, {"lang": "python", "region": "eu", "tier": "gold"})
            flagged = parse_config(["--agent-id", "other", "--label", "lang=py3", "--heartbeat-interval-ms", "250"])
            self.assertEqual(flagged.agent_id, "other")
            self.assertEqual(flagged.labels, {"lang": "py3"})
            self.assertEqual(flagged.heartbeat_interval, 0.25)

    def test_bad_values_exit_2(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True), mock.patch("sys.stderr"):
            for argv in (["--agent-id", "a.b"], ["--subject-root", "a..b"], ["--max-concurrency", "0"]):
                with self.subTest(argv=argv), self.assertRaises(SystemExit) as caught:
                    parse_config(argv)
                self.assertEqual(caught.exception.code, 2)


if __name__ == "__main__":
    unittest.main()


class Signatures(unittest.TestCase):
    def test_reproduces_the_published_vectors(self) -> None:
        # The same file the Rust implementation checks (shared/identity).
        with open(VECTORS, encoding="utf-8") as file:
            vectors = json.load(file)
        self.assertEqual(vectors["scheme"], "concord-signature-v1")
        self.assertGreaterEqual(len(vectors["vectors"]), 3)
        for v in vectors["vectors"]:
            with self.subTest(purpose=v["purpose"]):
                key = SigningKey(base64.b64decode(v["seed"]))
                self.assertEqual(public_key_base64(key), v["publicKey"])
                payload = v["payload"].encode()
                self.assertEqual(canonical(v["purpose"], v["signer"], v["signedAtMs"], payload).decode(), v["canonical"])
                headers = signature_headers(key, v["purpose"], v["signer"], payload, v["signedAtMs"])
                self.assertEqual(
                    headers,
                    {
                        "Concord-Signer": v["signer"],
                        "Concord-Signed-At": str(v["signedAtMs"]),
                        "Concord-Signature": v["signature"],
                    },
                )

    def test_key_file_is_made_once_then_read_back(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "agent.key")
            made = load_or_create_key(path)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            self.assertEqual(public_key_base64(load_or_create_key(path)), public_key_base64(made))
            with open(path, "w", encoding="ascii") as file:
                file.write("garbage")
            with self.assertRaises(ValueError):
                load_or_create_key(path)

    def test_a_generated_id_gets_a_key_and_a_given_one_only_from_a_file(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertIsNotNone(parse_config([]).key)
            self.assertIsNone(parse_config(["--agent-id", "py-fixed"]).key)
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "k")
                config = parse_config(["--agent-id", "py-fixed", "--key-file", path])
                self.assertEqual(public_key_base64(config.key), public_key_base64(load_or_create_key(path)))
