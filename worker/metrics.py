"""A worker's own Prometheus metrics on a port of its own (`samsweep worker --metrics-port P`,
docs/api.md "Metrics").

- `samsweep_worker_slots`: the worker's slots; `samsweep_worker_slots_busy`: those training
  now (a slot waiting for GPU memory counts as busy: it holds its trial).
- `samsweep_worker_epochs_total`: epochs trained and recorded; its rate is epochs/s.
- On a GPU host, through NVIDIA's management library (nvidia-ml-py, where installed):
  `samsweep_gpu_memory_used_bytes`, `samsweep_gpu_memory_total_bytes` and
  `samsweep_gpu_utilization_ratio` per GPU, labelled by its index.

The trials train in the pool's processes, so the counts are kept in prometheus_client's
multiprocess mode: `samsweep worker` makes a fresh directory (`PROMETHEUS_MULTIPROC_DIR`)
before anything loads prometheus_client, each pool process writes its values there, and
the main process serves their sum. No label names a study or a trial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LOCAL = CollectorRegistry(auto_describe=True)  # written to MULTIPROC_DIR's files too
BUSY = Gauge(
    "samsweep_worker_slots_busy",
    "The worker's slots that hold a trial now.",
    registry=LOCAL,
    multiprocess_mode="livesum",
)
EPOCHS = Counter(
    "samsweep_worker_epochs", "Epochs trained and recorded by the worker's slots.", registry=LOCAL
)


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Around a trial in a slot's process."""
    BUSY.inc()
    try:
        yield
    finally:
        BUSY.dec()


def counting_epochs(on_epoch: Callable[[Any], None]) -> Callable[[Any], None]:
    """``on_epoch`` that counts each epoch it recorded."""

    def wrapped(metrics: Any) -> None:
        on_epoch(metrics)
        EPOCHS.inc()

    return wrapped


class SlotsCollector(Collector):
    def __init__(self, slots: int) -> None:
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("samsweep_worker_slots", "The worker's slots.", value=self.slots)


class GpuCollector(Collector):
    """Each visible GPU's memory and utilization from NVML, read at each scrape."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "samsweep_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"]
        )
        total = GaugeMetricFamily("samsweep_gpu_memory_total_bytes", "GPU memory.", labels=["gpu"])
        util = GaugeMetricFamily(
            "samsweep_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU.",
            labels=["gpu"],
        )
        for i in range(self.nvml.nvmlDeviceGetCount()):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            used.add_metric([str(i)], float(memory.used))
            total.add_metric([str(i)], float(memory.total))
            util.add_metric([str(i)], rates.gpu / 100.0)
        yield from (used, total, util)


def nvml() -> Any | None:
    """NVIDIA's management library, initialized, or None (not installed, no driver)."""
    try:
        import pynvml  # type: ignore[import-untyped,unused-ignore]  # nvidia-ml-py: no stubs

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def serve(port: int, host: str, slots: int, directory: str) -> None:
    """Serve the slots' summed values, the slot count and the GPUs on ``host:port``."""
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, directory)
    registry.register(SlotsCollector(slots))
    library = nvml()
    if library is not None:
        registry.register(GpuCollector(library))
    start_http_server(port, addr=host, registry=registry)
