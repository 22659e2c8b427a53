"""The OpenAPI contract of /v1 and /connection: valid OpenAPI 3.1, and schemathesis (pinned in
scripts/python-constraints.txt) finds no 5xx and no answer that breaks it, over a bounded number
of generated requests against a running `serve` on moto with an admin token."""

import os
import pathlib
import subprocess
import sys

import requests
from openapi_spec_validator import validate

from conftest import TARGET, World

ENDPOINTS = {
    "/connection": {"get", "post", "delete"},
    "/v1/status": {"get"},
    "/v1/grants": {"get", "post"},
    "/v1/grants/{env}/{cidr}": {"delete"},
    "/v1/grants/{env}/{address}/{prefix}": {"delete"},
    "/v1/audit": {"get"},
    "/v1/events": {"post"},
    "/v1/requests": {"get"},
    "/v1/requests/{id}/approve": {"post"},
    "/v1/requests/{id}/deny": {"post"},
}


def test_the_contract_is_openapi_3_1_and_names_every_route(tmp_path, serve):
    server = serve(World(tmp_path))
    spec = requests.get(server.url("/openapi.json"), timeout=10).json()
    assert spec["openapi"].startswith("3.1.")
    validate(spec)
    assert {path: set(ops) for path, ops in spec["paths"].items()} == ENDPOINTS
    # Every documented operation is served (whatever it answers without credentials, never a
    # 404 for the route or a 405 for the method).
    for path, methods in ENDPOINTS.items():
        concrete = path.replace("{env}", "dev").replace("{cidr}", "198.51.100.7").replace("{id}", "x")
        for method in methods:
            status = requests.request(method, server.url(concrete), timeout=10).status_code
            assert status == 401, f"{method.upper()} {concrete}: {status}"
    schemas = spec["components"]["schemas"]
    for name in ["Grant", "ListedGrant", "AuditEvent", "ChangeRequest", "Status", "ErrorBody", "Whoami"]:
        assert name in schemas, name
    assert set(spec["components"]["securitySchemes"]) == {"token", "iam"}


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_contract(tmp_path, serve):
    world = World(tmp_path)
    # Limits high enough that generated requests reach the handlers instead of 429.
    world.config.write_text("[connection]\nrate_limit_per_minute = 100000\n")
    server = serve(world)
    token = world.token("ops")
    # Its reports and its cache of failures go under the target directory, never the checkout.
    report = TARGET / "schemathesis"
    report.mkdir(parents=True, exist_ok=True)
    command = [
        str(pathlib.Path(sys.executable).parent / "schemathesis"), "run", server.url("/openapi.json"),
        "--header", f"Authorization: Bearer {token}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples", os.environ.get("PORTCULLIS_SCHEMATHESIS_EXAMPLES", "30"),
        "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", "20261207",
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "20",
        "--report", "junit", "--report-dir", str(report),
        "--no-color",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=270, cwd=report)
    assert out.returncode == 0, f"schemathesis found problems:\n{out.stdout[-20000:]}\n{out.stderr[-5000:]}"
    assert "passed" in out.stdout
