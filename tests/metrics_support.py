"""Helpers for tests that read metrics: /metrics text into samples and names; cache results."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from app import metrics

# The sample names each metric type exposes besides its family name.
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
    "gauge": ("",),
    "untyped": ("",),
    "info": ("_info",),
}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    return [
        Sample(sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def exposed_names(text: str) -> set[str]:
    """Every series name /metrics declares, with or without samples yet (HELP/TYPE count)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sample's value, 0 when it has not been recorded yet."""
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def cache_results() -> Counter[str]:
    """tessera_cache_requests_total by result, as the process registry holds it now."""
    counts: Counter[str] = Counter()
    for result in metrics.CACHE_RESULTS:
        sample = metrics.REGISTRY.get_sample_value(
            "tessera_cache_requests_total", {"result": result}
        )
        counts[result] = int(sample or 0)
    return counts


class CacheMeter:
    """What the cache reported between two points of a test."""

    def __init__(self) -> None:
        self.start = cache_results()

    def delta(self) -> dict[str, int]:
        now = cache_results()
        return {result: now[result] - self.start[result] for result in metrics.CACHE_RESULTS}
