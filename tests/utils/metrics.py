"""Reading this process's Prometheus counters in tests (what /metrics would show)."""

from prometheus_client import REGISTRY

from shared.platform.upstreams import Upstream


def retries_counted(upstream: Upstream) -> float:
    """`lectern_upstream_retries_total` for one upstream, as counted so far in this process."""
    return REGISTRY.get_sample_value("lectern_upstream_retries_total", {"upstream": upstream.value}) or 0.0
