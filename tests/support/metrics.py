"""Scraping a running IOC's /metrics over HTTP, parsed with prometheus_client's own text parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import wait_until


def parse(text: str) -> dict:
    """Metric families of an exposition, by name."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse(response.read().decode())


def samples(families: dict, sample_name: str) -> list:
    return [s for f in families.values() for s in f.samples if s.name == sample_name]


def wait_scrape(port: int, predicate, timeout: float = 20.0) -> dict:
    """Scrape until ``predicate(families)`` holds (the IOC collects at stats_hz)."""
    last: dict = {}

    def ok() -> dict | None:
        nonlocal last
        last = scrape(port)
        return last if predicate(last) else None

    return wait_until(ok, timeout, what="metrics condition", describe=lambda: str(sorted(last)))


def histogram(families: dict, name: str, model: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of one model's histogram ``name`` (without ``_bucket``)."""
    return {float(s.labels["le"]): s.value for s in samples(families, f"{name}_bucket")
            if s.labels.get("model") == model}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding the ``q`` quantile of the observations between two scrapes
    (inf when it lies beyond the last finite bucket; nan when there were none)."""
    edges = sorted(after)
    counts = [after[e] - before.get(e, 0.0) for e in edges]
    total = counts[-1] if counts else 0.0
    if not total:
        return float("nan")
    return next(e for e, c in zip(edges, counts, strict=True) if c >= q * total)


def quantiles_ms(before: dict[float, float], after: dict[float, float], qs=(0.5, 0.99)) -> str:
    """``"<= 2 / <= 10"``: bucket upper bounds (ms) of the quantiles ``qs`` between two scrapes."""
    return " / ".join(f"<= {bucket_quantile(before, after, q) * 1e3:g}" for q in qs)
