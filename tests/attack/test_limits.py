"""Limits before work: an oversized body is refused from its Content-Length before a byte of it is
read (each request below sends its headers only, so a server that waited for the body would time out),
a body of unknown length is refused, and the pages without an upload control take no uploads."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

MB = 1024 * 1024


def headers_only(url: str, method: str, path: str, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, str]:
    """Send a request's headers and no body; return (status, response text) read within ``timeout``."""
    parts = urlsplit(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", *[f"{k}: {v}" for k, v in headers.items()]]
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < 200:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    assert data, f"{method} {path}: no answer within {timeout} s (the server waited for the body)"
    return int(data.split(b" ", 2)[1]), data.decode("latin-1")


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("path", ["/api/login", "/api/rankings", "/review/gradio_api/queue/join"])
def test_15_mb_body_refused_before_it_is_read(attack_server, path):
    start = time.monotonic()
    status, text = headers_only(attack_server.url, "POST", path,
                                {"Content-Type": "application/json", "Content-Length": str(15 * MB)})
    assert status == 413, text
    assert time.monotonic() - start < 2
    assert len(text) < 2000  # no echo of anything


def test_15_mb_bodies_cost_no_memory_and_do_not_stall_health(attack_server):
    """Real 15 MB bodies, unauthenticated, sent at once while /health is timed."""
    import concurrent.futures

    pid = attack_server.app.process.pid
    before = rss_mb(pid)
    body = b'{"username": "' + b"x" * (15 * MB) + b'", "password": "p"}'

    def post(path):
        try:
            return httpx.post(attack_server.url + path, content=body, timeout=30,
                              headers={"Content-Type": "application/json"}).status_code
        except httpx.HTTPError:  # the server may close the connection before the upload ends
            return 413

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        posts = [pool.submit(post, p) for p in ("/api/login", "/api/rankings", "/api/login", "/api/rankings")]
        health = []
        for _ in range(10):
            t = time.monotonic()
            assert httpx.get(attack_server.url + "/health", timeout=10).status_code == 200
            health.append(time.monotonic() - t)
        assert [p.result() for p in posts] == [413] * 4
    assert max(health) < 1.0, health
    assert rss_mb(pid) - before < 50, (before, rss_mb(pid))


def test_admin_import_may_be_larger_but_not_unlimited(attack_server):
    admin = attack_server.headers("admin")
    status, text = headers_only(attack_server.url, "POST", "/api/admin/import",
                                {**admin, "Content-Type": "multipart/form-data; boundary=x",
                                 "Content-Length": str(21 * MB)})
    assert status == 413, text
    rows = b"".join(b'{"prompt": "big import %d %s"}\n' % (i, b"z" * 1000) for i in range(1500))  # 1.5 MB
    answer = httpx.post(attack_server.url + "/api/admin/import", headers=admin, timeout=120,
                        files={"file": ("big.jsonl", rows)})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["prompts_added"] == 1500


def test_chunked_body_of_unknown_length_is_refused(attack_server):
    status, text = headers_only(attack_server.url, "POST", "/api/login",
                                {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 411, text


@pytest.mark.parametrize("page", ["/review", "/ab"])
def test_pages_without_an_upload_control_take_no_upload(attack_server, page):
    cookies = {"rlhf_token": attack_server.reviewer_token}
    answer = httpx.post(f"{attack_server.url}{page}/gradio_api/upload", cookies=cookies, timeout=30,
                        files={"files": ("a.txt", b"hello")})
    assert answer.status_code == 413, answer.text[:300]
    status, _ = headers_only(attack_server.url, "POST", f"{page}/gradio_api/upload",
                             {"Cookie": f"rlhf_token={attack_server.reviewer_token}",
                              "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(25 * MB)})
    assert status == 413


def test_admin_page_upload_works_up_to_its_limit(attack_server):
    cookies = {"rlhf_token": attack_server.admin_token}
    answer = httpx.post(f"{attack_server.url}/admin/gradio_api/upload", cookies=cookies, timeout=30,
                        files={"files": ("prompts.jsonl", b'{"prompt": "uploaded"}\n')})
    assert answer.status_code == 200, answer.text[:300]
    status, _ = headers_only(attack_server.url, "POST", "/admin/gradio_api/upload",
                             {"Cookie": f"rlhf_token={attack_server.admin_token}",
                              "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(21 * MB)})
    assert status == 413
