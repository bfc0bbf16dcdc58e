"""Tests for capture.export.postman: Postman Collection v2.1, valid, organised and runnable."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import jsonschema

from capture.export import postman
from test_export_samples import BOUNDARY, HTTP_SAMPLES, JSON_BODY, flow, message, samples

SCHEMA = json.loads((Path(__file__).parent / "data" / "postman-collection-v2.1.0.json").read_text())


def validate(collection: dict) -> None:
    """Validate against the Postman Collection v2.1.0 schema (draft-07)."""
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(collection), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def walk(items: list[dict], trail: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict]]:
    """Every request item with the folder names above it."""
    for item in items:
        if "request" in item:
            yield trail, item
        else:
            yield from walk(item["item"], trail + (item["name"],))


def items_by_name(collection: dict) -> dict[str, dict]:
    return {item["name"]: item for _, item in walk(collection["item"])}


def sample_items(with_responses: bool = True) -> dict[str, dict]:
    """Request items of the HTTP samples, by sample name."""
    flows = samples()
    collection = postman.collection(flows.values(), "samples", with_responses)
    by_name = items_by_name(collection)
    return {name: by_name[f"{flows[name].method} {flows[name].path}"] for name in HTTP_SAMPLES}


def headers(request: dict) -> list[tuple[str, str]]:
    return [(h["key"], h["value"]) for h in request["header"]]


# -- validity and layout ---------------------------------------------------------


def test_every_sample_gives_a_valid_collection() -> None:
    """The sample set exports to a collection the v2.1.0 schema accepts, with and without examples."""
    for with_responses in (True, False):
        collection = postman.collection(samples().values(), "All samples", with_responses)
        validate(collection)


def test_info_block() -> None:
    """info has a fresh uuid4 _postman_id, the name and the v2.1.0 schema URL."""
    first = postman.collection([], "Phone 1", True)
    second = postman.collection([], "Phone 1", True)
    validate(first)
    assert first["info"]["name"] == "Phone 1"
    assert first["info"]["schema"] == "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
    assert uuid.UUID(first["info"]["_postman_id"]).version == 4
    assert first["info"]["_postman_id"] != second["info"]["_postman_id"]
    assert first["item"] == []


def test_folders_by_host_then_path_segments() -> None:
    """Items sit in a folder per host, then one folder per path segment but the last."""
    collection = postman.collection(samples().values(), "s", False)
    layout = {item["name"]: trail for trail, item in walk(collection["item"])}
    assert layout["GET /v1/items?page=2&q=caf%C3%A9+latte&empty=&flag&sort=name%2Cdesc"] == ("api.example.com", "v1")
    assert layout["POST /v1/items"] == ("api.example.com", "v1")
    assert layout["DELETE /v1/items/42"] == ("api.example.com", "v1", "items")
    assert layout["POST /account/login"] == ("shop.example.com", "account")
    assert layout["POST /photos/new/upload"] == ("upload.example.com", "photos", "new")
    assert layout["GET /a/b/c?x=1"] == ("secure.example.com:8443", "a", "b")
    assert layout["GET /health"] == ("down.example.com",)
    hosts = [folder["name"] for folder in collection["item"]]
    assert hosts == ["api.example.com", "shop.example.com", "upload.example.com", "cdn.example.com",
                     "down.example.com", "secure.example.com:8443"]


def test_tunnels_and_failed_connects_are_skipped() -> None:
    """Records that are not HTTP requests give no item."""
    flows = samples()
    collection = postman.collection([flows["tunnel"], flows["tls_failure"]], "s", True)
    assert collection["item"] == []


def test_distinct_requests_and_duplicates_as_examples() -> None:
    """One item per method + URL + body; a repeat adds its response as another example."""
    first = flow(path="/v1/me", response=message([("Content-Type", "text/plain")], b"one"))
    again = flow(path="/v1/me", status=304, reason="Not Modified", response=message([]))
    other_method = flow(method="DELETE", path="/v1/me")
    other_body = flow(method="POST", path="/v1/me", request=message([("Content-Type", "text/plain")], b"a"))
    other_body2 = flow(method="POST", path="/v1/me", request=message([("Content-Type", "text/plain")], b"b"))
    collection = postman.collection([first, again, other_method, other_body, other_body2], "s", True)
    validate(collection)
    found = [item for _, item in walk(collection["item"])]
    assert [item["name"] for item in found] == ["GET /v1/me", "DELETE /v1/me", "POST /v1/me", "POST /v1/me"]
    examples = found[0]["response"]
    assert [(e["code"], e["status"], e.get("body")) for e in examples] == [(200, "OK", "one"), (304, "Not Modified", "")]
    assert [item["request"]["body"]["raw"] for item in found[2:]] == ["a", "b"]


def test_without_responses_there_are_no_examples() -> None:
    """with_responses=False exports requests only."""
    for item in sample_items(with_responses=False).values():
        assert item["response"] == []


# -- requests --------------------------------------------------------------------


def test_url_object() -> None:
    """raw, protocol, host labels, port only when not default, path segments and the raw query."""
    items = sample_items()
    url = items["get_query"]["request"]["url"]
    assert url["raw"] == "https://api.example.com/v1/items?page=2&q=caf%C3%A9+latte&empty=&flag&sort=name%2Cdesc"
    assert url["protocol"] == "https"
    assert url["host"] == ["api", "example", "com"]
    assert "port" not in url
    assert url["path"] == ["v1", "items"]
    assert url["query"] == [
        {"key": "page", "value": "2"},
        {"key": "q", "value": "caf%C3%A9+latte"},
        {"key": "empty", "value": ""},
        {"key": "flag", "value": None},
        {"key": "sort", "value": "name%2Cdesc"},
    ]
    secure = items["https_port"]["request"]["url"]
    assert (secure["protocol"], secure["port"], secure["path"]) == ("https", "8443", ["a", "b", "c"])
    assert "query" not in items["head"]["request"]["url"]


def test_headers_without_hop_by_hop_host_and_length() -> None:
    """Connection, Proxy-*, Transfer-Encoding, Host and Content-Length are left to the client."""
    items = sample_items()
    assert headers(items["get_query"]["request"]) == [
        ("User-Agent", "ExampleApp/3.1 (iPhone; iOS 17.1)"),
        ("Accept", "application/json"),
        ("Cookie", "sid=abc123; theme=dark"),
        ("X-Dup", "1"),
        ("X-Dup", "2"),
    ]
    assert headers(items["form_post"]["request"]) == [("Content-Type", "application/x-www-form-urlencoded")]
    assert headers(items["json_post"]["request"]) == [
        ("Content-Type", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
    ]
    named = flow(request=message([("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"),
                                  ("TE", "trailers"), ("Upgrade", "h2c"), ("X-Keep", "2")]))
    item = postman.collection([named], "s", False)["item"][0]["item"][0]
    assert headers(item["request"]) == [("X-Keep", "2")]


def test_urlencoded_body() -> None:
    """A form body becomes mode urlencoded with decoded keys and values."""
    body = sample_items()["form_post"]["request"]["body"]
    assert body == {
        "mode": "urlencoded",
        "urlencoded": [
            {"key": "user", "value": "alice"},
            {"key": "pass", "value": "s&crét"},
            {"key": "remember", "value": ""},
        ],
    }


def test_raw_json_body_with_language() -> None:
    """A JSON body is raw with language json."""
    body = sample_items()["json_post"]["request"]["body"]
    assert body == {"mode": "raw", "raw": JSON_BODY.decode(), "options": {"raw": {"language": "json"}}}


def test_raw_languages() -> None:
    """Raw bodies get json, xml, html, javascript or text from the Content-Type."""
    cases = {
        "application/vnd.api+json": "json",
        "text/xml; charset=utf-8": "xml",
        "application/soap+xml": "xml",
        "text/html": "html",
        "application/javascript": "javascript",
        "text/plain": "text",
        "": "text",
    }
    for content_type, expected in cases.items():
        head = [("Content-Type", content_type)] if content_type else []
        f = flow(method="POST", path="/p", request=message(head, b"x"))
        item = postman.collection([f], "s", False)["item"][0]["item"][0]
        assert item["request"]["body"]["options"]["raw"]["language"] == expected, content_type


def test_multipart_becomes_formdata() -> None:
    """Multipart text fields become text params, file parts file params; Postman writes the boundary."""
    request = sample_items()["multipart"]["request"]
    assert request["body"] == {
        "mode": "formdata",
        "formdata": [
            {"key": "title", "value": "Holiday été", "type": "text"},
            {"key": "photo", "type": "file", "src": "beach.png", "contentType": "image/png"},
        ],
    }
    assert all(key.lower() != "content-type" for key, _ in headers(request))
    assert "beach.png" in request["description"]


def test_unparseable_multipart_falls_back() -> None:
    """A multipart body that does not parse is kept raw when it is text."""
    f = flow(method="POST", path="/u", request=message(
        [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], b"not multipart at all"))
    request = postman.collection([f], "s", False)["item"][0]["item"][0]["request"]
    assert request["body"]["mode"] == "raw"
    assert ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}") in headers(request)


def test_binary_body_is_described_not_sent() -> None:
    """A binary body cannot be a runnable raw body: it is left out and described."""
    request = sample_items()["binary_request"]["request"]
    assert "body" not in request
    assert "binary" in request["description"] and "1024 bytes" in request["description"]


def test_truncated_body_is_noted() -> None:
    """A truncated text body keeps the stored bytes and says it was truncated."""
    request = sample_items()["truncated"]["request"]
    assert request["body"]["raw"] == "line 1\nline 2\n"
    assert "truncated" in request["description"] and "14 of 1000000" in request["description"]


def test_get_with_body_is_not_pruned() -> None:
    """Postman drops GET bodies unless disableBodyPruning is set; we set it when there is one."""
    f = flow(path="/search", request=message([("Content-Type", "application/json")], b"{}"))
    item = postman.collection([f], "s", False)["item"][0]["item"][0]
    assert item["protocolProfileBehavior"] == {"disableBodyPruning": True}
    assert "protocolProfileBehavior" not in sample_items()["get_query"]


# -- examples --------------------------------------------------------------------


def test_examples_carry_the_response() -> None:
    """An example has name, originalRequest, status, code, headers, text body and preview language."""
    items = sample_items()
    example = items["get_query"]["response"][0]
    assert example["name"] == "200 OK"
    assert example["originalRequest"] == items["get_query"]["request"]
    assert (example["status"], example["code"]) == ("OK", 200)
    assert example["body"] == JSON_BODY.decode()
    assert example["_postman_previewlanguage"] == "json"
    assert ("Set-Cookie", "sid=xyz789; Path=/; Secure; HttpOnly; SameSite=Lax") in headers(example)
    assert example["responseTime"] == 125.0


def test_example_bodies() -> None:
    """gzip bodies are shown decoded; binary bodies are skipped; no response means no example."""
    items = sample_items()
    assert json.loads(items["json_post"]["response"][0]["body"])["note"] == "é"
    assert "body" not in items["binary_response"]["response"][0]
    assert items["error"]["response"] == []
    assert items["https_port"]["response"][0]["_postman_previewlanguage"] == "xml"
    assert items["no_content"]["response"][0]["status"] == "No Content"


def test_missing_reason_gets_the_standard_phrase() -> None:
    """An empty reason phrase is filled from the status code."""
    f = flow(status=404, reason="", response=message([]))
    example = postman.collection([f], "s", True)["item"][0]["item"][0]["response"][0]
    assert (example["status"], example["code"], example["name"]) == ("Not Found", 404, "404 Not Found")


def test_ipv6_host() -> None:
    """An IPv6 literal host is one bracketed label."""
    f = flow(host="::1", port=8080, path="/x")
    collection: dict[str, Any] = postman.collection([f], "s", False)
    validate(collection)
    url = collection["item"][0]["item"][0]["request"]["url"]
    assert url["host"] == ["[::1]"] and url["port"] == "8080" and url["raw"] == "http://[::1]:8080/x"


def test_websockets_are_left_out_with_a_note() -> None:
    """WebSocket flows make no request item; the collection's description says how many were left out."""
    socket = flow(kind="websocket", path="/chat", status=101)
    collection = postman.collection([flow(path="/a"), socket, socket], "Chat", True)
    validate(collection)
    assert [item["name"] for _, item in walk(collection["item"])] == ["GET /a"]
    assert collection["info"]["description"].startswith("2 WebSocket connections are left out")
    assert "description" not in postman.collection([flow()], "Plain", True)["info"]


def test_compressed_request_body_is_sent_decoded_without_its_encoding() -> None:
    """Postman sends a body as given: a gzip request body goes decoded and its Content-Encoding is dropped."""
    import gzip

    document = b'{"q": "compressed"}'
    sent = flow(method="POST", request=message([("Host", "api.example.com"), ("Content-Type", "application/json"),
                                                ("Content-Encoding", "gzip")], gzip.compress(document)))
    [(_, item)] = list(walk(postman.collection([sent], "s", False)["item"]))
    request = item["request"]
    assert request["body"]["raw"] == document.decode()
    assert ("Content-Encoding", "gzip") not in headers(request)
    assert "sent with Content-Encoding gzip" in request["description"]
