"""/metrics after real traffic: parsed with prometheus_client's parser (the Prometheus text
format), its counters checked against what the test did."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import World, eventually


def scrape(server):
    """Every sample, as {(name, frozenset(labels)): value}."""
    response = requests.get(server.metrics, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    """One sample's value. A sample that is not there fails the test rather than reading as 0, so a
    renamed or removed metric cannot pass as "nothing counted"."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have: {sorted({n for n, _ in samples})}"
    return samples[key]



def test_metrics_count_what_happened(tmp_path, serve):
    world = World(tmp_path)
    server = serve(world)
    ops = server.session(world.token("ops"))
    carol = server.session(world.token("carol", "self-service"))
    before = scrape(server)
    assert value(before, "portcullis_sweeper_lease_held") in (0, 1)

    assert carol.post(server.url("/connection")).status_code == 201
    assert carol.post(server.url("/connection")).status_code == 200  # a refresh: no EC2 call
    assert carol.get(server.url("/connection")).status_code == 200
    assert ops.post(server.url("/v1/grants"), json={"cidr": "198.51.100.7", "ttl": "1h"}).status_code == 201
    assert ops.post(server.url("/v1/grants"), json={"cidr": "198.51.100.8", "ttl": "2h"}).status_code == 201
    for _ in range(2):
        assert ops.get(server.url("/v1/grants?all=true")).status_code == 200
    assert requests.get(server.url("/v1/status")).status_code == 401
    assert ops.get(server.url("/v1/nothing/here")).status_code == 404
    assert ops.delete(server.url("/v1/grants/dev/198.51.100.8%2F32")).status_code == 200
    # /metrics lives on its own listener only.
    assert requests.get(server.url("/metrics")).status_code == 404
    assert requests.get(server.metrics.replace("/metrics", "/v1/status")).status_code == 404

    after = scrape(server)

    def grew(name, **labels):
        # After must have the sample; before may not yet (a label set appears when first counted).
        return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0)

    http = "portcullis_http_requests_total"
    assert grew(http, route="/connection", method="POST", status="201") == 1
    assert grew(http, route="/connection", method="POST", status="200") == 1
    assert grew(http, route="/connection", method="GET", status="200") == 1
    assert grew(http, route="/v1/grants", method="POST", status="201") == 2
    assert grew(http, route="/v1/grants", method="GET", status="200") == 2
    assert grew(http, route="/v1/status", method="GET", status="401") == 1
    # /v1/nothing/here, and /metrics asked of the public listener.
    assert grew(http, route="unmatched", method="GET", status="404") == 2
    assert grew(http, route="/v1/grants/{env}/{cidr}", method="DELETE", status="200") == 1
    assert not [k for k in after if k[0] == http and ("route", "/v1/grants/dev/198.51.100.8%2F32") in k[1]], \
        "raw paths never become labels"

    # Three applies authorized a rule each (the refresh made none); the removal revoked one.
    ec2 = {"service": "ec2", "outcome": "success"}
    assert grew("portcullis_aws_calls_total", action="AuthorizeSecurityGroupIngress", **ec2) == 3
    assert grew("portcullis_aws_calls_total", action="RevokeSecurityGroupIngress", **ec2) == 1
    assert grew("portcullis_aws_calls_total", action="DescribeSecurityGroups", **ec2) >= 4
    assert not [k for k in after if k[0] == "portcullis_aws_calls_total" and ("outcome", "success") not in k[1]]

    # Four applies (three adds and the removal), each observed, planned and applied.
    change = {"cause": "change", "outcome": "ok"}
    assert grew("portcullis_reconcile_duration_seconds_count", **change) == 4
    assert grew("portcullis_reconcile_duration_seconds_sum", **change) > 0

    assert value(after, "portcullis_live_grants", environment="dev", source="self-service") == 1
    assert value(after, "portcullis_live_grants", environment="dev", source="manual") == 1
    assert value(after, "portcullis_change_requests_pending") == 0
    assert value(after, "portcullis_metrics_read_errors_total") == 0
    # Without a webhook, announcements go to the log at once; the lease is taken within 15 s.
    eventually(lambda: value(scrape(server), "portcullis_outbox_pending") == 0, "the outbox to drain")
    eventually(lambda: value(scrape(server), "portcullis_sweeper_lease_held") == 1, "the sweeper lease")
