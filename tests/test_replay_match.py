"""Matching without sockets: keys, ignored fields at any depth, turns, and the nearest on a miss."""

from __future__ import annotations

import json
from typing import Any

from sseproxy.recording import RecordedRequest, RecordedResponse, Recording
from sseproxy.replay_match import Index, differences, strip_fields


def rec(method: str, path: str, body: Any = b"", query: str = "") -> Recording:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Recording(RecordedRequest(method, path, query, (), raw),
                     RecordedResponse(200, (), 0.0, frames=None, body=b"", end="ok"))


def find(index: Index, method: str, path: str, body: Any = b"", query: str = "") -> str | None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    found = index.next(index.key(method, path, query, raw))
    return found[0] if found else None


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi", "id": "a1"}], "meta": {"request_id": "r1"}}


def test_json_bodies_match_as_parsed_json() -> None:
    index = Index([("a.json", rec("POST", "/chat", CHAT))])
    assert find(index, "POST", "/chat", json.loads(json.dumps(CHAT, indent=4, sort_keys=True))) == "a.json"
    assert find(index, "post", "/chat", CHAT) == "a.json"
    assert find(index, "POST", "/chat", {**CHAT, "model": "other"}) is None
    assert find(index, "GET", "/chat", CHAT) is None and find(index, "POST", "/chat/", CHAT) is None


def test_ignored_fields_are_left_out_at_any_depth_inside_lists_too() -> None:
    index = Index([("a.json", rec("POST", "/chat", CHAT))], ignore_fields=["id", "request_id"])
    changed = {**CHAT, "messages": [{"role": "user", "content": "hi", "id": "zz"}], "meta": {"request_id": "r9"}}
    assert find(index, "POST", "/chat", changed) == "a.json"
    without = {**CHAT, "messages": [{"role": "user", "content": "hi"}], "meta": {}}
    assert find(index, "POST", "/chat", without) == "a.json"
    assert find(index, "POST", "/chat", {**changed, "messages": [{"role": "user", "content": "ho"}]}) is None
    assert strip_fields({"a": [{"id": 1, "b": {"id": 2}}], "id": 3}, frozenset({"id"})) == {"a": [{"b": {}}]}


def test_other_bodies_byte_for_byte_and_the_query_in_any_order() -> None:
    index = Index([("a.json", rec("PUT", "/f", b"\xff\x00 x", query="a=1&b=2"))])
    assert find(index, "PUT", "/f", b"\xff\x00 x", query="b=2&a=1") == "a.json"
    assert find(index, "PUT", "/f", b"\xff\x00 x ", query="a=1&b=2") is None
    assert find(index, "PUT", "/f", b"\xff\x00 x", query="a=1") is None


def test_recordings_of_one_request_are_served_in_turn_oldest_first_then_again() -> None:
    index = Index([("2.json", rec("GET", "/x")), ("1.json", rec("GET", "/x")), ("3.json", rec("GET", "/y"))])
    assert [find(index, "GET", "/x") for _ in range(5)] == ["1.json", "2.json", "1.json", "2.json", "1.json"]
    index.add("4.json", rec("GET", "/x"))
    assert [find(index, "GET", "/x") for _ in range(3)] == ["4.json", "1.json", "2.json"]


def test_the_nearest_same_method_and_path_first_then_path_then_alike() -> None:
    index = Index([("models.json", rec("GET", "/v1/models")), ("embed.json", rec("POST", "/v1/embeddings", {"x": 1})),
                   ("chat-get.json", rec("GET", "/v1/chat/completions")),
                   ("chat.json", rec("POST", "/v1/chat/completions", CHAT)),
                   ("chat2.json", rec("POST", "/v1/chat/completions", {**CHAT, "model": "zzzzzzz", "n": 9}))])
    body = {**CHAT, "messages": [{"role": "user", "content": "other", "id": "a1"}]}
    key = index.key("POST", "/v1/chat/completions", "", json.dumps(body).encode())
    miss = index.miss(key, "POST", "/v1/chat/completions", "", json.dumps(body).encode())
    assert miss.nearest == ["chat.json", "chat2.json", "chat-get.json"]
    assert "the nearest, chat.json, differs in body.messages[0].content" in miss.message
    assert "--ignore-field" in miss.message
    key = index.key("DELETE", "/v1/models", "", b"")
    assert index.miss(key, "DELETE", "/v1/models", "", b"").nearest[0] == "models.json"
    assert Index().miss(key, "DELETE", "/v1/models", "", b"").nearest == []


def test_differences_name_the_paths() -> None:
    assert differences({"a": [1, {"b": 2}], "c": 1}, {"a": [1, {"b": 3}, 4], "d": 1}, "body") == \
        ["body.a[1].b", "body.a[2]", "body.c", "body.d"]
    assert differences(1, 1.0, "body") == ["body"]
