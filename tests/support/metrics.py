"""A gateway's ``/metrics``, parsed: what tests read of it."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gw: GatewayProcess) -> Samples:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = httpx.get(f"{gw.api_url}/metrics", timeout=10)
    response.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
