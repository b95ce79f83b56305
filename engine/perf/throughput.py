"""Throughput metrics of every run: samples/s, tokens/s and model FLOPs utilisation (MFU).

Logged with the train metrics at each log interval (so in metrics.jsonl and TensorBoard):

- ``perf/samples_per_second``: training samples per second over the interval, all processes
  (local count × world size);
- ``perf/tokens_per_second``: the same in tokens, for token models (data info ``task = "lm"`` or
  a ``vocab_size``): every position of ``batch["input"]`` is a token;
- ``perf/mfu``: achieved model FLOP/s of one process / the device's peak FLOP/s, when the peak is
  known (``run.peak_flops``, or the table below for the run's precision).

Model FLOPs of one training sample (forward + backward), in order of preference: the model's
``flops_per_sample`` attribute, its ``flops_per_token`` × tokens per sample, or the usual estimate
6 · N per token (token models) or per sample (others), N = trainable parameters (2N forward, 4N
backward per use of each weight). The estimate ignores attention's sequence-length term and
undercounts models that reuse a weight at many positions (convolutions); such model plugins should
set ``flops_per_sample`` / ``flops_per_token``.

Timing is wall time between log records, excluding evaluation and checkpoints (the loop pauses
the clock around them). The log record is built after the train metrics are read, which waits for
the device, so queued GPU work is counted in the interval it belongs to.
"""

from __future__ import annotations

import math
import time
from operator import itemgetter
from typing import Any

import torch

# Dense (no sparsity) peak FLOP/s per GPU from NVIDIA's datasheets: {name fragment: {dtype: peak}}.
# "fp32" means TF32 tensor cores when torch allows them for matmuls (the setting is read at run start).
PEAK_FLOPS = {
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "tf32": 378.0e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM; matched after "H100 PCIe"
    "A100": {"bf16": 312.0e12, "tf32": 156.0e12, "fp32": 19.5e12},
    "L4": {"bf16": 121.0e12, "tf32": 60.0e12, "fp32": 30.3e12},
}


def peak_flops(device: torch.device, precision: str, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s, where it came from); (0, reason) when unknown."""
    if override > 0:
        return override, "run.peak_flops"
    if device.type != "cuda":
        return 0.0, f"no peak known for {device.type}; set run.peak_flops for perf/mfu"
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_FLOPS.items():
        if fragment in name:
            kind = precision if precision == "bf16" else ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
            return peaks[kind], f"{name}, {kind} dense peak"
    return 0.0, f"no peak known for {name}; set run.peak_flops for perf/mfu"


def model_flops(model: torch.nn.Module, token_model: bool) -> tuple[float, float, str]:
    """(FLOPs per sample, FLOPs per token, source); the per-token figure is 0 when unknown."""
    per_sample = getattr(model, "flops_per_sample", None)
    if per_sample:
        return float(per_sample), 0.0, "model.flops_per_sample"
    per_token = getattr(model, "flops_per_token", None)
    if per_token and token_model:
        return 0.0, float(per_token), "model.flops_per_token"
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if token_model:
        return 0.0, 6.0 * n, f"6·N per token, N={n:,}"
    return 6.0 * n, 0.0, f"6·N per sample, N={n:,}"


class Throughput:
    """Counts samples/tokens per micro-batch; ``metrics()`` turns them into rates at log time."""

    def __init__(self, state: Any) -> None:
        info = getattr(state.data, "info", None) or {}
        self.token_model = info.get("task") == "lm" or "vocab_size" in info
        self.world = state.world_size
        self.per_sample, self.per_token, flops_source = model_flops(state.model, self.token_model)
        self.peak, peak_source = peak_flops(state.device, state.run.precision, state.run.peak_flops)
        self.plan = f"throughput: model FLOPs from {flops_source}; MFU peak: {peak_source}"
        self.shapes: list = []  # of each micro-batch's input since the last metrics() (read there)
        self.seconds = 0.0
        self.t = time.perf_counter()

    def count(self, batch: dict) -> None:
        """Note a micro-batch: the shape of its input (samples × positions), counted at log time."""
        self.shapes.append(getattr(batch.get("input"), "shape", None))

    def pause(self) -> None:
        self.seconds += time.perf_counter() - self.t

    def resume(self) -> None:
        self.t = time.perf_counter()

    def metrics(self) -> dict[str, float]:
        """Rates since the last call (then reset); empty if nothing was counted."""
        now = time.perf_counter()
        seconds, self.seconds, self.t = self.seconds + now - self.t, 0.0, now
        shapes = [*filter(None, self.shapes)]  # no shape, or () (a scalar input): nothing to count
        self.shapes.clear()  # in place: the training step appends to this list (engine/step.py)
        samples, tokens = sum(map(itemgetter(0), shapes)), sum(map(math.prod, shapes))
        if not samples or seconds <= 0:
            return {}
        out = {"perf/samples_per_second": self.world * samples / seconds}
        if self.token_model:
            out["perf/tokens_per_second"] = self.world * tokens / seconds
        if self.peak:
            flops = self.per_sample * samples + self.per_token * tokens
            out["perf/mfu"] = flops / seconds / self.peak
        return out
