"""A judge client for any OpenAI-compatible chat-completions endpoint (MMHal-Bench, LLaVA-Bench, MMBench).

- POST `{base_url}/chat/completions` with httpx; the API key comes from an environment variable (name
  configurable, default OPENAI_API_KEY; unset: no Authorization header, for local servers).
- At most `concurrency` requests in flight; connection errors, timeouts, HTTP 429 and 5xx are retried with
  exponential backoff (Retry-After honoured), other 4xx fail at once; after `retries` retries a JudgeError says
  what went wrong last.
- A reply that is not JSON, or has no `choices[0].message.content`, is not an error: it comes back as None and
  is counted (`malformed`), so scoring goes on (the benchmark then treats it as an unparseable reply).
- An on-disk cache (JSON lines) keyed by the SHA-256 of the canonical JSON of the request body: a repeated
  request is never sent again, and a run cut during judging resumes. Without a URL the client answers from the
  cache only (offline re-scoring).
- `collect(options, requests, out)` is what the CLIs call: replies from `--judge-replies FILE` (offline), or
  from the cache and the endpoint; it writes OUT/judge.jsonl ({"id", "reply"} per request).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

log = logging.getLogger("jaxlava.eval.judge")
REPLIES, CACHE = "judge.jsonl", "judge_cache.jsonl"


class JudgeError(RuntimeError):
    pass


@dataclasses.dataclass(kw_only=True)
class JudgeOptions:
    judge_url: str | None = None
    """base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1 (requests go to URL/chat/completions)"""
    judge_model: str | None = None
    """judge model name (default: the official judge of the benchmark, now retired: pick a substitute and score
    the baselines with it too)"""
    judge_key_env: str = "OPENAI_API_KEY"
    """environment variable that holds the API key"""
    judge_replies: str | None = None
    """re-score offline from saved replies: a judge.jsonl of an earlier run, or the official script's output"""
    judge_cache: str | None = None
    """reply cache keyed by the full request (default: OUT/judge_cache.jsonl); with it and no --judge-url,
    scoring runs offline"""
    judge_concurrency: int = 4
    """requests in flight at once"""
    judge_retries: int = 5
    """retries of a failed request (errors, 429, 5xx) before giving up"""
    judge_backoff: float = 2.0
    """seconds before the first retry; doubled at each retry"""
    judge_timeout: float = 120.0
    """seconds to wait for one reply"""


def canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(body: dict) -> str:
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def reply_text(payload) -> str | None:
    """The message content of a chat-completions response (a dict), or None when it has none."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class ReplyCache:
    """Append-only JSON lines {"key", "reply", "request"}; the last entry of a key wins; torn lines are skipped."""

    def __init__(self, path: str | None):
        self.path, self.entries, self._lock = path, {}, threading.Lock()
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        e = json.loads(line)
                        self.entries[e["key"]] = e["reply"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, reply: str, body: dict) -> None:
        with self._lock:
            self.entries[key] = reply
            if not self.path:
                return
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": key, "reply": reply, "request": body}, ensure_ascii=False) + "\n")
                fh.flush()


class JudgeClient:
    def __init__(self, base_url: str | None, *, key_env: str = "OPENAI_API_KEY", cache: str | None = None,
                 concurrency: int = 4, retries: int = 5, backoff: float = 2.0, timeout: float = 120.0,
                 max_backoff: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions" if base_url else None
        self.cache = ReplyCache(cache)
        self.concurrency, self.retries, self.backoff = max(1, concurrency), max(0, retries), backoff
        self.max_backoff, self.timeout = max_backoff, timeout
        self.headers = {"Content-Type": "application/json"}
        key = os.environ.get(key_env)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        elif self.url:
            log.warning("$%s is not set: sending judge requests without an API key", key_env)
        self.stats = {"requests": 0, "cached": 0, "asked": 0, "retries": 0, "malformed": 0}
        self._lock = threading.Lock()
        self._http = None

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def ask(self, requests: dict[str, dict], desc: str = "judging", progress: bool = True) -> dict[str, str | None]:
        """id -> reply text (None: a malformed response) for request bodies keyed by id."""
        replies: dict[str, str | None] = {}
        todo = {}
        for rid, body in requests.items():
            self._count("requests")
            hit = self.cache.get(request_key(body))
            if hit is not None:
                replies[rid] = hit
                self._count("cached")
            else:
                todo[rid] = body
        if todo and self.url is None:
            first = sorted(todo)[:5]
            raise JudgeError(f"{len(todo)} judge replies are not in the cache {self.cache.path} (e.g. for {first}; "
                             "its keys cover the judge model, prompt and parameters); give --judge-url to ask the "
                             "judge, or --judge-replies FILE to re-score saved replies")
        if not todo:
            return replies
        import httpx
        from tqdm import tqdm
        with httpx.Client(timeout=self.timeout) as self._http, \
                ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._ask_one, body): rid for rid, body in todo.items()}
            with tqdm(total=len(futures), desc=desc, unit="req", disable=not progress) as bar:
                try:
                    for f in as_completed(futures):
                        replies[futures[f]] = f.result()
                        bar.update(1)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        self._http = None
        return replies

    def _ask_one(self, body: dict) -> str | None:
        resp = self._post(body)
        self._count("asked")
        try:
            text = reply_text(resp.json())
        except ValueError:
            text = None
        if text is None:
            self._count("malformed")
            log.warning("malformed judge reply (HTTP %d): %.200s", resp.status_code, resp.text)
            return None
        self.cache.put(request_key(body), text, body)
        return text

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        base = self.backoff * 2 ** (attempt - 1)
        return min(base * (1 + 0.25 * random.random()), self.max_backoff)

    def _post(self, body: dict):
        import httpx
        last, retry_after = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self._delay(attempt, retry_after))
            retry_after = None
            try:
                resp = self._http.post(self.url, json=body, headers=self.headers)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last, retry_after = f"HTTP {resp.status_code}: {resp.text[:200]}", resp.headers.get("retry-after")
                continue
            if resp.status_code >= 400:
                raise JudgeError(f"judge {self.url} refused the request: HTTP {resp.status_code}: {resp.text[:300]}")
            return resp
        raise JudgeError(f"judge {self.url} failed {self.retries + 1} times "
                         f"({self.retries} retries); last error: {last}")


# ------------------------------------------------------------------------------------------ saved replies
def load_saved_replies(path: str) -> dict[str, str | None] | list[str | None]:
    """Replies saved earlier, for offline re-scoring.

    - JSON lines (this tool's judge.jsonl, LLaVA's review files): {"question_id" | "id", "reply" | "content"};
      returns id (as str) -> reply.
    - A JSON list (the official MMHal script's --evaluation output: chat-completion objects, or plain strings):
      returns the replies in order.
    """
    if not os.path.exists(path):
        raise JudgeError(f"judge replies file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return [r if isinstance(r, str) or r is None else reply_text(r) for r in data]
    out: dict[str, str | None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rid = rec["question_id"] if "question_id" in rec else rec["id"]  # LLaVA's "id" is a row count
        except (json.JSONDecodeError, KeyError, TypeError):
            raise JudgeError(f"{path}, line {n}: not a saved judge reply (need JSON with id and reply)") from None
        reply = rec.get("reply", rec.get("content"))
        out[str(rid)] = reply if isinstance(reply, str) else reply_text(reply) if isinstance(reply, dict) else None
    return out


def _match_saved(saved, ids: list[str], path: str) -> dict[str, str | None]:
    if isinstance(saved, list):
        if len(saved) != len(ids):
            raise JudgeError(f"{path} holds {len(saved)} replies in order, but there are {len(ids)} requests")
        return dict(zip(ids, saved))
    missing = [i for i in ids if i not in saved]
    if missing:
        raise JudgeError(f"{path} has no reply for {len(missing)} requests, e.g. ids {missing[:5]}")
    return {i: saved[i] for i in ids}


def make_body(model: str, messages: list[dict], **params) -> dict:
    body = {"model": model, "messages": messages}
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def collect(options: JudgeOptions, requests: dict[str, dict], out: str, *, desc: str = "judging",
            progress: bool = True) -> tuple[dict[str, str | None], dict]:
    """Replies for request bodies keyed by id (saved file, cache, or the endpoint); writes OUT/judge.jsonl.

    Returns (id -> reply or None, statistics)."""
    ids = list(requests)
    if options.judge_replies:
        replies = _match_saved(load_saved_replies(options.judge_replies), ids, options.judge_replies)
        stats = {"source": options.judge_replies, "requests": len(ids)}
    else:
        client = JudgeClient(options.judge_url, key_env=options.judge_key_env,
                             cache=options.judge_cache or os.path.join(out, CACHE),
                             concurrency=options.judge_concurrency, retries=options.judge_retries,
                             backoff=options.judge_backoff, timeout=options.judge_timeout)
        replies = client.ask(requests, desc=desc, progress=progress)
        stats = dict(client.stats, source=options.judge_url or f"cache {client.cache.path}")
    from jaxlava.fileio import atomic_open
    with atomic_open(os.path.join(out, REPLIES)) as fh:
        for i in ids:
            fh.write(json.dumps({"id": i, "reply": replies[i]}, ensure_ascii=False) + "\n")
    stats["malformed"] = sum(replies[i] is None for i in ids)
    return {i: replies[i] for i in ids}, stats


def judge_model(options: JudgeOptions, default: str) -> str:
    return options.judge_model or default
