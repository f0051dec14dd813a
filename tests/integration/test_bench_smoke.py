"""The pipeline and gateway benchmarks still run, at a tiny size (no figure is asserted)."""

from __future__ import annotations

import pytest

from bench import gateway, pipeline

pytestmark = pytest.mark.integration


async def test_pipeline_bench_runs_a_few_vms_through():
    run = await pipeline.measure(5, 5, 5, timeout=60, quiet=False)
    assert run["vms"] == 5 and run["groups"] == 1
    assert run["events"] > 0 and run["deliveries"] > 0 and run["hops"]
    assert run["raw_amqp"]["messages"] == run["events"] == run["raw_pg"]["inserts"]


async def test_gateway_bench_runs_a_few_clients():
    run = await gateway.measure(20, 2, group_size=10, quiet=False)
    assert run["gateway"]["requests"] == 20 * 2 * 2 and run["gateway"]["errors"] == 0
    assert run["bare"]["requests"] == run["gateway"]["requests"]
