"""Triton's Prometheus metrics, read the way an autoscaler reads them.

The scale-out signal (docs/scale-out.md) is the average time a request waits in a model's queue over
a window: the increase of ``nv_inference_queue_duration_us`` divided by the increase of
``nv_inference_request_success``, summed over models and replicas. It is what NVIDIA's
``deploy/k8s-onprem`` recipe turns into a custom metric with prometheus-adapter
(``docker/kubernetes/monitoring/prometheus-adapter-rules.yaml`` holds the same formula in PromQL);
:func:`queue_time_per_request` computes it from two scrapes, so the formula is tested against a real
server. Queue time rises before latency does and does not depend on how long a model takes, so one
threshold fits face swap and diffusion alike.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

QUEUE_TIME = "nv_inference_queue_duration_us"
SUCCESSES = "nv_inference_request_success"


@dataclass(frozen=True)
class Scrape:
    """One read of a metrics endpoint: (metric name, sorted labels) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over the samples whose labels include ``labels`` (the parser names a
        counter's samples ``NAME_total``; Prometheus and PromQL keep Triton's ``NAME``)."""
        names, wanted = (name, f"{name}_total"), set(labels.items())
        return sum(value for (sample, keys), value in self.samples.items() if sample in names and wanted <= set(keys))


def parse(text: str) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Scrape(samples)


def scrape(url: str, timeout_s: float = 10.0) -> Scrape:
    """Read ``http://HOST:PORT/metrics`` (``url`` is ``HOST:PORT`` or a full URL)."""
    if not url.startswith("http"):
        url = f"http://{url}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse(response.read().decode("utf-8"))


def queue_time_per_request(before: Scrape, after: Scrape, **labels: str) -> float | None:
    """Average queue time in microseconds of the requests that succeeded between two scrapes (the
    autoscaling signal); None when none did."""
    requests = after.total(SUCCESSES, **labels) - before.total(SUCCESSES, **labels)
    if requests <= 0:
        return None
    return (after.total(QUEUE_TIME, **labels) - before.total(QUEUE_TIME, **labels)) / requests
