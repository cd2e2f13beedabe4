"""The worker's GPU series from NVML, with a fake library standing in for the driver."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from worker.metrics import GpuCollector


class FakeNvml:
    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 (NVML's names)
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=50 + handle)


# docs/api.md "Metrics": GPU memory and utilization per GPU, through NVML
def test_gpu_memory_and_utilization_per_gpu_from_nvml() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml()))
    text = generate_latest(registry).decode()
    assert 'samsweep_gpu_memory_used_bytes{gpu="1"} 2.147483648e+09' in text
    assert 'samsweep_gpu_memory_total_bytes{gpu="0"} 8.589934592e+10' in text
    assert 'samsweep_gpu_utilization_ratio{gpu="1"} 0.51' in text
