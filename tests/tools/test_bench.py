"""`raftkv bench` smoke (own 3-node cluster, 2 s) and the delay proxy.

No timing targets are asserted: the machine is shared. The proxy test checks only a lower bound
(the added delay is at least the configured one).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from raftkv.client.cli import main as raftkv_main
from raftkv_tools.bench import main as bench_main
from raftkv_tools.bench.loadgen import latency_summary, percentile
from raftkv_tools.bench.workload import KEY_BYTES, VALUE_BYTES, keys, values
from raftkv_tools.delayproxy import DelayProxy, parse_delay


def _bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[str, dict[str, Any]]:
    """`raftkv bench` at C=8 in tmp_path; the printed table and the JSON report."""
    json_file = tmp_path / "report.json"
    status = raftkv_main([
        "bench",
        "--clients", "8",
        *options,
        "--workdir", str(tmp_path / "clusters"),
        "--json-out", str(json_file),
        "--quiet",
    ])  # fmt: skip
    table = capsys.readouterr().out
    assert status == 0, table
    return table, json.loads(json_file.read_text())


def test_bench_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, report = _bench(
        tmp_path, capsys, "--workloads", "set,mixed", "--duration", "2", "--warmup", "0.5"
    )
    runs = report["throughput"]
    assert [run["workload"] for run in runs] == ["set", "mixed"]
    for run in runs:
        assert run["ops"] > 0, run
        assert run["errors"] == 0, run
        assert run["latency_ms"]["p50"] > 0
    assert report["footprint"][0]["sets_applied"] > 0
    assert "Throughput, C=8" in table
    for run in runs:
        assert f"{run['ops_per_s']:,.0f}" in table
    # Every process the benchmark started is gone.
    for line in (tmp_path / "clusters" / "raftkv" / "cluster.json").read_text().splitlines():
        if '"address"' in line:
            port = int(line.rsplit(":", 1)[1].strip('",'))
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_bench_fill_measures_a_fresh_cluster_after_exactly_n_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, report = _bench(
        tmp_path, capsys, "--workloads", "set", "--duration", "1", "--warmup", "0.2",
        "--fill", "3000",
    )  # fmt: skip
    # The SET run took thousands of SETs on the first cluster; the footprint counts only the
    # fresh one's preload and fill.
    assert report["throughput"][0]["ops"] > 0
    [footprint] = report["footprint"]
    assert footprint["sets_applied"] == 3000, footprint
    assert "Footprint after the fill" in table
    assert (tmp_path / "clusters" / "fill-raftkv").is_dir()


def test_bench_bad_arguments() -> None:
    assert bench_main(["--workloads", "nope"]) == 2
    assert bench_main(["--cluster", "x.json", "--against", "etcd"]) == 2


def test_workload_shapes() -> None:
    assert len(set(keys())) == 1000
    assert all(len(k.encode()) == KEY_BYTES for k in keys())
    assert all(len(v.encode()) == VALUE_BYTES for v in values())
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    summary = latency_summary([0.001] * 999 + [0.1])
    assert summary["p50"] == pytest.approx(1.0)
    assert summary["p99.9"] == pytest.approx(1.0)
    assert summary["max"] == pytest.approx(100.0)


def test_parse_delay() -> None:
    assert parse_delay("50ms") == pytest.approx(0.05)
    assert parse_delay("0.2") == pytest.approx(0.2)
    assert parse_delay("250us") == pytest.approx(0.00025)
    with pytest.raises(ValueError):
        parse_delay("fast")


async def _round_trips(port: int, count: int, payload: bytes) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(len(payload)) == payload
            times.append(time.perf_counter() - started)
        writer.write_eof()
        assert await reader.read() == b""  # EOF travels through the proxy too
    finally:
        writer.close()
    return times


def test_delay_proxy_adds_at_least_the_configured_delay() -> None:
    up, back = 0.03, 0.02

    async def scenario() -> tuple[list[float], list[float], int]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            direct = await _round_trips(port, 3, b"ping")
            async with DelayProxy(f"127.0.0.1:{port}", delay=up, delay_back=back) as proxy:
                delayed = await _round_trips(proxy.port, 5, b"x" * 100_000)
                connections = proxy.connections
        finally:
            server.close()
            await server.wait_closed()
        return direct, delayed, connections

    direct, delayed, connections = asyncio.run(scenario())
    assert connections == 1
    assert min(delayed) >= up + back
    assert min(delayed) - min(direct) >= (up + back) * 0.99
