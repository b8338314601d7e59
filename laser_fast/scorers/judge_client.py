"""The OpenAI-compatible client the LLM judges use (retries, concurrency, a response cache)."""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from laser_fast.errors import ConfigError, LaserError

logger = logging.getLogger(__name__)


#: Base URL used when neither the argument nor ``LASER_FAST_JUDGE_URL`` is given.
DEFAULT_JUDGE_URL = "http://127.0.0.1:8000/v1"
_KEY_ENV = ("LASER_FAST_JUDGE_API_KEY", "OPENAI_API_KEY")
_RETRY_STATUS = frozenset((408, 409, 425, 429, 500, 502, 503, 504))
# Status codes that would fail every request the same way: stop with a clear error.
_FATAL_STATUS = frozenset((401, 403, 404, 405))


def default_judge_url() -> str:
    """``LASER_FAST_JUDGE_URL`` if set, else :data:`DEFAULT_JUDGE_URL`."""
    return os.environ.get("LASER_FAST_JUDGE_URL") or DEFAULT_JUDGE_URL


def redact_url(url: str) -> str:
    """``url`` as it may be logged or written: credentials (``user:password@``) and every query
    value (``?api_key=...``) replaced by ``***``.

    >>> redact_url("https://me:s3cret@api.example.com/v1?api_key=k&x=1")
    'https://***@api.example.com/v1?api_key=***&x=***'
    """
    try:
        p = urllib.parse.urlsplit(str(url))
    except ValueError:
        return "<a URL that does not parse>"
    netloc = p.netloc if "@" not in p.netloc else "***@" + p.netloc.rsplit("@", 1)[1]
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(p.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, query, ""))


def _loopback(host: str | None) -> bool:
    import ipaddress

    if not host or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: urllib would follow a 302 to another host with the
    ``Authorization`` header (the API key) and turn the POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise LaserError(f"the judge endpoint {redact_url(req.full_url)} redirected (HTTP {code}) to {redact_url(newurl)}; "
                         "redirects are not followed, so the API key is never sent to another address: "
                         "point --judge-url / LASER_FAST_JUDGE_URL at the final address")


_OPENER = urllib.request.build_opener(_RefuseRedirect())


def open_url(req: urllib.request.Request, timeout: float):
    """``urlopen`` without redirects (see :class:`_RefuseRedirect`)."""
    return _OPENER.open(req, timeout=timeout)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------


#: Answers per shard in a URI work directory: a full shard is closed and uploaded once (the answers
#: of a killed run's last shard stay in the machine's local copy and are uploaded by its next run).
SHARE_EVERY = 256


class _Unreachable(Exception):
    """Internal: the endpoint could not be reached after all retries."""


class AnswerCache:
    """The judges' answer cache: append-only JSONL shards under a folder, keyed by the sha256 of
    model + messages + sampling parameters (see :meth:`cache_key`); shared by every judge backend.

    Subclasses set ``self.model``, ``self._lock`` (a lock), ``self._cache = None``,
    ``self._cache_dir = None`` and ``self._shard = None``, then call :meth:`set_cache_dir`.
    """

    model: str

    # ---- cache -------------------------------------------------------------------------------

    def set_cache_dir(self, cache_dir: str | Path | None) -> None:
        """Use ``cache_dir`` for the response cache (None = no cache); loads existing shards lazily."""
        with self._lock:
            self._close_shard()
            self._cache_dir = Path(cache_dir) if cache_dir is not None else None
            self._cache = None

    def _shared(self):
        """The URI work directory whose copy holds the cache folder (None: local storage)."""
        if self._cache_dir is None:
            return None
        from laser_fast.runtime.workdir import WorkDir

        return WorkDir.owning(self._cache_dir)

    def _close_shard(self) -> None:
        # called under self._lock
        if self._shard is not None:
            self._shard.close()
            self._shard = None
            wd = self._shared()
            if wd is not None:
                wd.sync_files(self._cache_dir, "responses-*.jsonl")

    def _load_cache(self) -> dict[str, str]:
        if self._cache is None:
            cache: dict[str, str] = {}
            wd = self._shared()
            if wd is not None:  # shards other machines wrote, and this machine's that never reached the storage
                wd.sync_files(self._cache_dir, "responses-*.jsonl")
            if self._cache_dir is not None and self._cache_dir.is_dir():
                for shard in sorted(self._cache_dir.glob("responses-*.jsonl")):
                    bad = 0
                    with open(shard, "rb") as f:
                        for line in f:
                            try:
                                d = json.loads(line.decode("utf-8"))
                                cache[d["key"]] = d["content"]
                            except (ValueError, KeyError, TypeError):
                                bad += 1  # a torn last line of an interrupted run, or a damaged file
                    if bad:
                        logger.warning("judge response cache %s: %d unreadable lines skipped (a run killed mid-write tears its last line); "
                                       "those prompts are sent again", shard, bad)
            self._cache = cache
        return self._cache

    def _store(self, key: str, content: str) -> None:
        # called under self._lock
        assert self._cache is not None
        self._cache[key] = content
        if self._cache_dir is None:
            return
        if self._shard is None:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            name = f"responses-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._shard = open(self._cache_dir / name, "a", encoding="utf-8")  # noqa: SIM115 - kept open, closed by close()
        # one write of one complete line per entry: a crash can only tear the last line
        self._shard.write(json.dumps({"key": key, "model": self.model, "content": content}, ensure_ascii=False) + "\n")
        self._shard.flush()
        self._unshared = getattr(self, "_unshared", 0) + 1
        if self._unshared >= SHARE_EVERY and self._shared() is not None:
            self._unshared = 0
            self._close_shard()  # uploaded once, whole; the next answer opens a new shard

    def cache_key(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any]) -> str:
        """sha256 of model + messages + sampling parameters (independent of URL and key)."""
        return _hash({"model": self.model, "messages": [dict(m) for m in messages], "params": dict(params)})

    def close(self) -> None:
        with self._lock:
            self._close_shard()


class JudgeClient(AnswerCache):
    """A small, cached, retrying client of an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``; None = ``LASER_FAST_JUDGE_URL`` or the default.
        model: model name sent in each request.
        api_key_env: environment variables read (first set wins) for the bearer token.
        max_concurrency: requests in flight at once.
        timeout: seconds a request may wait on the server (for the connection and for each read;
            a timed-out request is retried like a connection error).
        max_retries: extra attempts after a retryable failure (connection error, timeout, 408/429/5xx).
        backoff: base delay in seconds; attempt ``k`` waits ``backoff * 2**k`` times a jitter in
            [0.5, 1.5) (capped at 60 s; a ``Retry-After`` header is honoured up to the same cap).
        cache_dir: folder of the response cache; None = no cache.
        temperature, top_p, max_tokens: default sampling parameters.
        extra_body: extra JSON fields sent with every request (e.g. ``chat_template_kwargs``).
    """

    def __init__(self, base_url: str | None = None, model: str = "default", *,
                 api_key_env: Sequence[str] = _KEY_ENV, max_concurrency: int = 8, timeout: float = 120,
                 max_retries: int = 4, backoff: float = 1.0, cache_dir: str | Path | None = None,
                 temperature: float = 0.0, top_p: float | None = None, max_tokens: int = 1024,
                 extra_body: Mapping[str, Any] | None = None):
        given = str(base_url or default_judge_url())
        parts = urllib.parse.urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"judge URL '{redact_url(given)}' must start with http:// or https:// and name a host "
                              "(set --judge-url or LASER_FAST_JUDGE_URL)")
        # user:password@ in the URL: sent as HTTP basic auth, never as part of an address that is shown
        self._basic = None
        if parts.username is not None:
            import base64

            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self._parts = (parts.scheme, netloc, parts.path.rstrip("/"), parts.query)
        self.base_url = urllib.parse.urlunsplit((*self._parts, ""))
        self.shown_url = redact_url(self.base_url)
        self.url = self.endpoint("/chat/completions")
        self._shown = redact_url(self.url)
        if parts.scheme == "http" and not _loopback(parts.hostname) and (self._basic or any(os.environ.get(k) for k in api_key_env)):
            logger.warning("judge endpoint %s: plain http to another machine sends the API key unencrypted; use https", self.shown_url)
        self.model = model
        self.api_key_env = tuple(api_key_env)
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.params: dict[str, Any] = {"temperature": float(temperature), "max_tokens": int(max_tokens)}
        if top_p is not None:
            self.params["top_p"] = float(top_p)
        self.extra_body = dict(extra_body or {})
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.Lock()
        self._cache: dict[str, str] | None = None
        self._cache_dir: Path | None = None
        self._shard = None
        self.set_cache_dir(cache_dir)

    def endpoint(self, path: str) -> str:
        """The URL of ``path`` under the base URL (its query, e.g. ``?api-version=``, kept)."""
        scheme, netloc, base, query = self._parts
        return urllib.parse.urlunsplit((scheme, netloc, base + path, query, ""))

    # ---- requests ----------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        for name in self.api_key_env:
            v = os.environ.get(name)
            if v:
                return v
        return None

    def _post(self, body: dict) -> dict:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self._basic:
            headers["Authorization"] = self._basic
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with open_url(req, self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                status = e.code
                text = _safe_body(e)
                if status in _FATAL_STATUS:
                    hint = {401: "set LASER_FAST_JUDGE_API_KEY (or OPENAI_API_KEY) to the server's key",
                            403: "check the API key's permissions",
                            404: f"check the URL (it should end in /v1) and that the server serves the model '{self.model}'",
                            405: "check the URL (it should end in /v1)"}[status]
                    raise LaserError(f"judge endpoint {self._shown} answered HTTP {status} ({text}): {hint}") from None
                if status not in _RETRY_STATUS:
                    raise _RequestFailed(f"HTTP {status}: {text}") from None
                last = f"HTTP {status}: {text}"
                ra = e.headers.get("Retry-After") if e.headers else None
                if ra:
                    try:
                        wait = min(60.0, float(ra))
                    except ValueError:
                        wait = None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
            except ValueError as e:  # not JSON
                raise _RequestFailed(f"the answer was not JSON ({e})") from None
            if attempt < self.max_retries:
                with self._lock:
                    self.stats["retries"] += 1
                if wait is None:
                    wait = min(60.0, self.backoff * (2 ** attempt) * (0.5 + random.random()))
                time.sleep(wait)
        raise _Unreachable(last)

    def _one(self, messages: Sequence[Mapping[str, str]], params: dict) -> str | None:
        key = self.cache_key(messages, params)
        with self._lock:
            hit = self._load_cache().get(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                return hit
            self.stats["requests"] += 1
        body = {"model": self.model, "messages": [dict(m) for m in messages], **params}
        try:
            out = self._post(body)
            content = out["choices"][0]["message"].get("content") or ""
        except _RequestFailed as e:
            with self._lock:
                self.stats["failures"] += 1
            logger.warning("judge request failed (%s): %s", self._shown, e)
            return None
        except (KeyError, IndexError, TypeError, AttributeError):
            with self._lock:
                self.stats["failures"] += 1
            logger.warning("judge endpoint %s answered without choices[0].message.content", self._shown)
            return None
        usage = out.get("usage") or {}
        with self._lock:
            self.stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self.stats["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            self._store(key, content)
        return content

    def chat_many(self, conversations: Sequence[Sequence[Mapping[str, str]]], **overrides: Any) -> list[str | None]:
        """Answer each conversation (list of ``{role, content}``); None where a request failed.

        Args:
            conversations: the chats to send, answered in order.
            **overrides: sampling parameters for these requests (``max_tokens``, ``response_format``...).

        Raises:
            LaserError: the endpoint cannot be reached after the retries, or rejects the requests
                as unauthorised / not found.
        """
        params = {**self.params, **self.extra_body, **{k: v for k, v in overrides.items() if v is not None}}
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations)))
        try:
            futs = [pool.submit(self._one, c, params) for c in conversations]
            return [f.result() for f in futs]
        except _Unreachable as e:
            with self._lock:
                self.stats["failures"] += 1
            raise LaserError(
                f"no answer from the judge endpoint {self._shown} after {self.max_retries + 1} attempt(s) (last error: {e}). "
                "Start an OpenAI-compatible server (vLLM: `vllm serve MODEL`, llama.cpp: `llama-server -m MODEL.gguf`, "
                "or `transformers serve`), point to one with --judge-url / LASER_FAST_JUDGE_URL, or run the judges in this process "
                "with --judge-backend transformers"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def chat(self, messages: Sequence[Mapping[str, str]], **overrides: Any) -> str | None:
        """Answer one conversation (see :meth:`chat_many`)."""
        return self.chat_many([messages], **overrides)[0]

class _RequestFailed(Exception):
    """Internal: one request failed for good (a non-retryable status or a malformed answer)."""


def _safe_body(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return ""
    try:
        d = json.loads(text)
        if isinstance(d, dict) and isinstance(d.get("error"), dict):
            text = str(d["error"].get("message", text))
        elif isinstance(d, dict) and "error" in d:
            text = str(d["error"])
    except ValueError:
        pass
    return " ".join(text.split())[:300]


