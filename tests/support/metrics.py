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
