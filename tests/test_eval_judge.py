"""The judge client against loopback HTTP servers: replies, auth, cache, retries, failures, malformed replies,
concurrency and offline re-scoring."""
import contextlib
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxlava.eval import judge, mmhal
from jaxlava.eval.judge import JudgeClient, JudgeError, JudgeOptions


def completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                          "content": text}}]}


@contextlib.contextmanager
def judge_server(respond):
    """A chat-completions server on 127.0.0.1 in a thread. `respond(body, n)` -> (status, payload[, headers]) for
    the n-th request (0-based); a dict payload is sent as JSON, bytes as they are. Yields the server, with
    `.url` (the base URL), `.requests` ([(path, headers, body)]) and `.max_inflight`."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw)
            with lock:
                n = len(srv.requests)
                srv.requests.append((self.path, dict(self.headers), body))
                srv.inflight += 1
                srv.max_inflight = max(srv.max_inflight, srv.inflight)
            try:
                status, payload, *extra = respond(body, n)
            finally:
                with lock:
                    srv.inflight -= 1
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in (extra[0] if extra else {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.requests, srv.inflight, srv.max_inflight = [], 0, 0
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def echo(body, n):
    """Replies "echo: <last message>"."""
    return 200, completion("echo: " + body["messages"][-1]["content"])


def _bodies(k=3, **params):
    return {f"q{i}": judge.make_body("judge-x", [{"role": "user", "content": f"question {i}"}], **params)
            for i in range(k)}


def _client(url, tmp_path=None, **kw):
    kw.setdefault("backoff", 0.01)
    return JudgeClient(url, cache=str(tmp_path / "cache.jsonl") if tmp_path else None, **kw)


def test_replies_auth_header_and_request_body(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sekrit")
    with judge_server(echo) as srv:
        replies = _client(srv.url, key_env="MY_JUDGE_KEY").ask(_bodies(temperature=0.2), progress=False)
    assert replies == {f"q{i}": f"echo: question {i}" for i in range(3)}
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer sekrit"
    assert body["model"] == "judge-x" and body["temperature"] == 0.2 and body["messages"][0]["role"] == "user"


def test_no_key_no_authorization_header(monkeypatch):
    monkeypatch.delenv("ABSENT_KEY", raising=False)
    with judge_server(echo) as srv:
        _client(srv.url, key_env="ABSENT_KEY").ask(_bodies(1), progress=False)
    assert "authorization" not in {k.lower() for k in srv.requests[0][1]}


def test_cache_is_keyed_by_the_full_request(tmp_path):
    bodies = _bodies(temperature=0.0)
    key = judge.request_key(bodies["q0"])
    canon = json.dumps(bodies["q0"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert key == hashlib.sha256(canon.encode()).hexdigest()
    assert judge.request_key(dict(reversed(list(bodies["q0"].items())))) == key  # key order does not matter
    with judge_server(echo) as srv:
        first = _client(srv.url, tmp_path).ask(bodies, progress=False)
        c2 = _client(srv.url, tmp_path)
        assert c2.ask(bodies, progress=False) == first and len(srv.requests) == 3
        assert c2.stats["cached"] == 3 and c2.stats["asked"] == 0
        c2.ask(_bodies(temperature=0.5), progress=False)  # another parameter: another request
        assert len(srv.requests) == 6
    offline = _client(None, tmp_path)  # no URL: the cache alone answers
    assert offline.ask(bodies, progress=False) == first
    with pytest.raises(JudgeError, match="not in the cache.*--judge-url"):
        offline.ask(_bodies(4, temperature=0.0), progress=False)


def test_retries_server_errors_then_succeeds():
    with judge_server(lambda body, n: (500, {"error": "busy"}) if n < 2 else echo(body, n)) as srv:
        c = _client(srv.url, retries=3)
        assert c.ask(_bodies(1), progress=False) == {"q0": "echo: question 0"}
    assert len(srv.requests) == 3 and c.stats["retries"] == 2


def test_rate_limit_with_retry_after_is_retried():
    with judge_server(lambda body, n: (429, {"error": "slow down"}, {"Retry-After": "0"}) if n == 0
                      else echo(body, n)) as srv:
        assert _client(srv.url, retries=1).ask(_bodies(1), progress=False)["q0"] == "echo: question 0"
    assert len(srv.requests) == 2


def test_always_failing_server_gives_a_clear_error_after_n_retries():
    with judge_server(lambda body, n: (503, {"error": "down"})) as srv, \
            pytest.raises(JudgeError, match=r"failed 3 times \(2 retries\); last error: HTTP 503"):
        _client(srv.url, retries=2).ask(_bodies(1), progress=False)
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried():
    with judge_server(lambda body, n: (401, {"error": "bad key"})) as srv, \
            pytest.raises(JudgeError, match="HTTP 401.*bad key"):
        _client(srv.url, retries=5).ask(_bodies(1), progress=False)
    assert len(srv.requests) == 1


def test_unreachable_server_is_retried_then_named():
    with judge_server(echo) as srv:
        url = srv.url
    with pytest.raises(JudgeError, match="failed 2 times.*(Connect|Error)"):
        _client(url, retries=1).ask(_bodies(1), progress=False)


def test_malformed_replies_are_counted_not_fatal(tmp_path):
    bad = {0: b"<html>oops</html>", 1: {"id": "no choices"}, 2: {"choices": []},
           3: {"choices": [{"message": {"content": None}}]}}

    def respond(body, n):
        i = int(body["messages"][0]["content"].split()[-1])
        return (200, bad[i]) if i in bad else echo(body, n)
    with judge_server(respond) as srv:
        c = _client(srv.url, tmp_path)
        replies = c.ask(_bodies(5), progress=False)
        assert [replies[f"q{i}"] for i in range(4)] == [None] * 4 and replies["q4"] == "echo: question 4"
        assert c.stats["malformed"] == 4 and len(srv.requests) == 5
        _client(srv.url, tmp_path).ask(_bodies(5), progress=False)  # malformed replies are not cached
        assert len(srv.requests) == 9
    res = mmhal.score([{"question_type": "other"}] * 2, [replies["q0"], "Rating: 4"])
    assert res["unparseable"] == 1 and res["scores"] == [0, 4]


def test_concurrency_limit():
    def slow(body, n):
        time.sleep(0.15)
        return echo(body, n)
    with judge_server(slow) as srv:
        _client(srv.url, concurrency=2).ask(_bodies(6), progress=False)
    assert srv.max_inflight == 2


def test_collect_writes_replies_and_rescores_offline(tmp_path):
    opts = JudgeOptions(judge_backoff=0.01)
    with judge_server(echo) as srv:
        opts.judge_url = srv.url
        replies, stats = judge.collect(opts, _bodies(), str(tmp_path), progress=False)
    assert stats["asked"] == 3 and stats["malformed"] == 0 and stats["source"] == srv.url
    saved = [json.loads(line) for line in (tmp_path / judge.REPLIES).read_text().splitlines()]
    assert saved == [{"id": f"q{i}", "reply": f"echo: question {i}"} for i in range(3)]
    # offline: the default cache in OUT, then the saved judge.jsonl
    again, stats = judge.collect(JudgeOptions(), _bodies(), str(tmp_path), progress=False)
    assert again == replies and stats["cached"] == 3
    other = tmp_path / "other"
    from_file, stats = judge.collect(JudgeOptions(judge_replies=str(tmp_path / judge.REPLIES)), _bodies(), str(other))
    assert from_file == replies and stats["requests"] == 3
    with pytest.raises(JudgeError, match="no reply for 1 requests"):
        judge.collect(JudgeOptions(judge_replies=str(tmp_path / judge.REPLIES)), _bodies(4), str(other))


def test_saved_replies_in_the_official_formats(tmp_path):
    mmhal_eval = tmp_path / "gpt4_eval.json"  # the official MMHal script's --evaluation: a list of responses
    mmhal_eval.write_text(json.dumps([completion("Rating: 5"), completion("rating: 1")]))
    assert judge.load_saved_replies(str(mmhal_eval)) == ["Rating: 5", "rating: 1"]
    review = tmp_path / "review.jsonl"  # LLaVA's review file
    review.write_text("\n".join(json.dumps({"id": i + 1, "question_id": 10 + i, "content": f"{i} 9\nok",
                                            "tuple": [i, 9]}) for i in range(2)) + "\n")
    loaded = judge.load_saved_replies(str(review))
    assert loaded == {"10": "0 9\nok", "11": "1 9\nok"}  # keyed by question_id (LLaVA's "id" counts rows)
    with pytest.raises(JudgeError, match="holds 2 replies in order, but there are 3"):
        judge.collect(JudgeOptions(judge_replies=str(mmhal_eval)), _bodies(3), str(tmp_path / "o"))
    with pytest.raises(JudgeError, match="not found"):
        judge.load_saved_replies(str(tmp_path / "missing.jsonl"))
