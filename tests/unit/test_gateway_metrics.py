"""The gateway's Prometheus metrics: children remembered per label values still count like prometheus_client's."""

from __future__ import annotations

from online.gateway.metrics import GatewayMetrics


def test_remembered_children_are_prometheus_clients_own_and_every_increment_counts():
    m = GatewayMetrics()
    child = m.requests.labels("acme", "/v1/embeddings", "", "200")
    assert m.requests.labels("acme", "/v1/embeddings", "", "200") is child  # answered from the memo
    for _ in range(3):
        m.requests.labels("acme", "/v1/embeddings", "", "200").inc()
    m.requests.labels("acme", "/v1/embeddings", "", "429").inc()
    m.cache.labels(model="embedder", result="hit").inc(2)  # by keyword, as prometheus_client allows
    m.request_latency.labels("/v1/embeddings", "").observe(0.003)
    assert m.requests.labels.cache_info().hits == 4  # prometheus_client's `labels` ran once per value set
    text = m.render().decode()
    assert 'tandem_requests_total{route="/v1/embeddings",status="200",tenant="acme",workflow=""} 3.0' in text
    assert 'tandem_requests_total{route="/v1/embeddings",status="429",tenant="acme",workflow=""} 1.0' in text
    assert 'tandem_cache_total{model="embedder",result="hit"} 2.0' in text
    assert 'tandem_request_latency_seconds_count{route="/v1/embeddings",workflow=""} 1.0' in text


def test_two_gateways_in_one_process_keep_their_own_children():
    a, b = GatewayMetrics(), GatewayMetrics()
    a.cache.labels("embedder", "hit").inc()
    assert a.cache.labels("embedder", "hit") is not b.cache.labels("embedder", "hit")
    assert 'tandem_cache_total{model="embedder",result="hit"} 0.0' in b.render().decode()
