"""The latency benchmark runs end to end on a tiny pipeline and reports both runtimes."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_benchmark_tiny_flux(tmp_path, offline):
    from genserve.benchmarks.export_latency import benchmark_family, format_rows

    rows, facts = benchmark_family("flux", "tiny", tmp_path, runs=2)
    assert [r.component for r in rows] == [
        "text_encoder",
        "text_encoder_2",
        "transformer",
        "vae_decoder",
        "vae_encoder",
    ]
    assert all(r.torch_ms > 0 and r.ort_ms > 0 for r in rows)
    assert facts["worst_parity"] <= 1e-4 and facts["peak_host_memory_mib"] > 0
    table = format_rows(rows)
    assert "speedup" in table and "transformer" in table
