"""The per-request tally: what a scrape of it shows, in Prometheus's own text format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from millibatch.service.tally import RequestTally


def samples(tally: RequestTally) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(tally)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counts_and_cumulative_buckets_with_bounds_inclusive() -> None:
    tally = RequestTally((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 0.01, 3.0):  # a value equal to a bound falls in that bucket
        tally.request_done("m", "Embed", "OK", seconds)
    tally.request_done("m", "Embed", "RESOURCE_EXHAUSTED", 0.0002)
    seen = samples(tally)
    key = (("model", "m"), ("rpc", "Embed"))
    assert seen[("millibatch_requests_total", (("code", "OK"), *key))] == 5
    assert seen[("millibatch_requests_total", (("code", "RESOURCE_EXHAUSTED"), *key))] == 1
    bucket = {le: seen[("millibatch_request_duration_seconds_bucket", tuple(sorted((*key, ("le", le)))))]
              for le in ("0.001", "0.01", "+Inf")}
    assert bucket == {"0.001": 3, "0.01": 5, "+Inf": 6}
    assert seen[("millibatch_request_duration_seconds_count", key)] == 6
    assert abs(seen[("millibatch_request_duration_seconds_sum", key)] - 3.0167) < 1e-9


def test_an_empty_tally_exports_no_series() -> None:
    assert samples(RequestTally((0.001,))) == {}
