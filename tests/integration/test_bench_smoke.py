"""The benchmarks still run, at a tiny size (no figure is asserted)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench import compare, datapath, gateway, pipeline, processes, spy_summary
from bench.fleet import FleetProvider, driver_of, feed_path
from shared.providers.base import BootSource, VmSpec
from tests.chaos.supervisor import PROCESSES

pytestmark = pytest.mark.integration


async def test_pipeline_bench_runs_a_few_vms_through():
    run = await pipeline.measure(5, 5, 5, timeout=60, quiet=False)
    assert run["vms"] == 5 and run["groups"] == 1
    assert run["events"] > 0 and run["deliveries"] > 0 and run["hops"]
    assert run["raw_amqp"]["messages"] == run["events"] == run["raw_pg"]["inserts"]


async def test_gateway_bench_runs_a_few_clients_against_one_and_two_workers():
    args = gateway.parser().parse_args(["--clients", "20", "--rounds", "2", "--group-size", "10",
                                        "--rate", "40", "--seconds", "1", "--no-report"])
    run = await gateway.measure(args, quiet=False)
    for workers in ("one_worker", "two_workers"):
        measured = run[workers]
        for server in ("gateway", "bare"):
            assert measured[server]["requests"] == 20 * 2 * 2, (workers, server)
            assert measured[f"open_{server}"]["requests"] == 40, (workers, server)
            assert measured[server]["errors"] == measured[f"open_{server}"]["errors"] == 0
        # The servers' own processes were measured, not the bench's.
        assert measured["gateway"]["server_cpu_s"] > 0
    assert run["gateway"] == run["one_worker"]["gateway"]


async def test_processes_bench_runs_a_few_vms_through_separate_processes():
    runs = await processes.measure(4, group_size=2, replicas=(1,), drivers=2, concurrency=4,
                                   timeout=120)
    run = runs[0]
    assert (run["vms"], run["groups"], run["replicas"]) == (4, 2, 1)
    # Each VM booted twice (network, then disk), each boot played by a driver process.
    assert run["vm_boots"] == 8 and run["http_requests"] == 4 * 6
    assert run["events"] > 0 and run["deliveries"] > 0 and run["hops"]
    assert set(run["cpu"]["processes"]) == set(PROCESSES) | {"vm-driver-0", "vm-driver-1"}
    assert run["raw_amqp"]["messages"] == run["events"] and run["raw_amqp"]["per_s"] > 0


async def test_fleet_provider_hands_both_boots_of_a_vm_to_one_driver(tmp_path):
    provider = FleetProvider(tmp_path, drivers=3)
    spec = VmSpec.model_validate({
        "vm_id": "7d0e8a1c-53a4-4a43-9d7e-3b7f4f0b7a11", "group": "g", "name": "app1",
        "role": "app", "cpus": 1, "memory_mb": 512, "disks_gb": [10]})
    made = await provider.create_vm(spec, idempotency_key="k1")
    vm_id = str(spec.vm_id)
    await provider.boot(made.ref, BootSource.NETWORK,
                        kernel_args={"ferry.vm": vm_id, "ferry.token": "t1",
                                     "ferry.gateway": "http://127.0.0.1:1"})
    await provider.boot(made.ref, BootSource.DISK)  # keeps the network boot's token
    lines = feed_path(tmp_path, driver_of(vm_id, 3)).read_text().splitlines()
    assert [json.loads(l) for l in lines] == [
        {"vm": vm_id, "token": "t1", "source": "network"},
        {"vm": vm_id, "token": "t1", "source": "disk"}]
    assert not [p for p in tmp_path.glob("boots-*.log") if p != feed_path(tmp_path, driver_of(vm_id, 3))]



def test_compare_runs_a_bench_on_an_earlier_commit_and_on_this_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_BENCH_RESULTS", str(tmp_path))  # the runs inherit it
    # HEAD as "before": the worktree machinery is what is under test, not a gain.
    result = compare.main(["--before", "HEAD", "--pairs", "1", "--no-report", "gateway",
                           "--clients", "5", "--rounds", "1", "--rate", "20", "--seconds", "1"])
    assert len(result["runs"]["before"]) == len(result["runs"]["after"]) == 1
    assert result["figures"]["req/s"]["before"] > 0 and result["figures"]["req/s"]["ratio"] > 0
    assert result["figures"]["2 workers req/s"]["ratio"] > 0
    # Its own worktree is gone (others' compares may run beside it on a shared repository).
    mine = f"ferry-before-{result['before'][:8]}-"
    assert not any(mine in line for line in subprocess.run(
        ["git", "worktree", "list"], capture_output=True, text=True, check=True).stdout.splitlines())


def test_spy_summary_counts_self_and_inclusive_time():
    text = spy_summary.summarise([
        "main (a.py:1);work (a.py:5);leaf (b.py:9) 3\n",
        "main (a.py:1);work (a.py:6) 1\n",
    ])
    assert text.startswith("4 samples")
    own, within = text.split("inclusive time")
    assert " 75.0 %  leaf (b.py)" in own and " 25.0 %  work (a.py)" in own
    assert "100.0 %  work (a.py)" in within and "100.0 %  main (a.py)" in within


async def test_datapath_bench_moves_a_small_tree_end_to_end(tmp_path, monkeypatch):
    """16 MB through archiver, gateway download, nginx and the VM side's fetch_checked |
    unpack_into (the bench checks each unpacked copy has the tree's files and bytes), and the
    bench's namespaces and nginx are gone afterwards."""
    run = await datapath.measure(16, 1, quiet=False, tree_root=tmp_path / "tree")
    assert run["bytes"] > 15_000_000 and 0 < run["archive_bytes"] < run["bytes"]
    assert all(s > 0 for s in run["best_s"].values())
    assert run["best_s"]["whole"] == run["best_s"]["archiver"] + run["best_s"]["vm"]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
    assert "ferry-dp-" not in namespaces and "ferry-dv-" not in namespaces
    assert not list(Path(tempfile.gettempdir()).glob("ferry-dp-*/nginx.conf"))
