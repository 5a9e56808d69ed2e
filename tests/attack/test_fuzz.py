"""The whole REST API fuzzed from its own OpenAPI schema (schemathesis): every operation gets at least
20 generated requests, valid and invalid, each sent as a reviewer and as an admin. No answer may be
a 5xx, have another content type than declared, or break the response schema declared on its route
(the 422 body included). Deterministic: hypothesis derandomized, no example database.

A server of its own (``--no-pages``: the pages are not in the schema): the fuzzer creates accounts,
imports, A/B sets, generation jobs (tiny model, 4 new tokens) and exports, which other tests should
not see.
"""

from __future__ import annotations

import signal

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from tests.attack.conftest import serve
from tests.conftest import stop_app

# POST /api/logout ends every session of the account (the fuzzer's own tokens with it); it is
# attacked in the session tests instead.
SKIPPED = {("POST", "/api/logout")}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_dir):
    server = serve(tmp_path_factory.mktemp("fuzz"), tiny_model_dir, "--no-pages")
    yield server
    assert stop_app(server.app) in (0, -signal.SIGTERM), server.app.output()


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
FUZZ_SETTINGS = settings(max_examples=20, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def fuzz_operation(operation, mode: GenerationMode, server) -> int:
    """Up to ``max_examples`` cases of ``operation`` in ``mode``, each sent as the reviewer and the
    admin; returns how many were sent (fewer when the operation has fewer distinct inputs)."""
    sent = []

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        for who in ("reviewer", "admin"):
            case.call_and_validate(base_url=server.url, headers=server.headers(who), checks=CHECKS)
        sent.append(1)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # Nothing of this operation can be made invalid (no parameters, or unconstrained strings).
    return len(sent)


def test_no_5xx_and_responses_match_their_schema(fuzz_server):
    # schemathesis' own pytest plugin (schemathesis.pytest.from_fixture) fails under pytest 9, so
    # each operation's strategy runs under hypothesis here.
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    failures, cases = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        cases[name] = 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                cases[name] += fuzz_operation(operation, mode, fuzz_server)
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{name} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(cases) >= 15, cases
    # Operations with any input get 20 or more; one without (GET /api/me) has a single distinct request.
    few = {name: n for name, n in cases.items() if n < 20}
    assert all(n >= 1 for n in few.values()) and len(few) <= 8, (few, cases)
    print("cases per operation:", cases)


def test_the_fuzzed_server_still_serves(fuzz_server):
    """After the fuzzing: the accounts still work and nothing was logged as a traceback."""
    assert httpx.get(fuzz_server.url + "/api/me", headers=fuzz_server.headers("admin"), timeout=30).status_code == 200
    assert "Traceback" not in fuzz_server.app.output(), fuzz_server.app.output()[-3000:]
