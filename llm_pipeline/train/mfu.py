"""Model FLOPs utilisation: achieved training FLOP/s over the accelerator's dense peak.

Peaks are the vendors' dense (no sparsity) tensor-core figures for bf16/fp16. Unknown devices,
and fp32, report no MFU unless the peak is given (TrainConfig.peak_tflops).
"""

from __future__ import annotations

# name fragment (as torch.cuda.get_device_name prints it, lower case) -> dense bf16/fp16 TFLOP/s.
# Longer fragments first: "h100 pcie" must win over "h100".
PEAK_TFLOPS_16BIT: dict[str, float] = {
    "gb200": 2500.0,
    "b200": 2250.0,
    "h200": 989.0,
    "h100 pcie": 756.0,
    "h100": 989.0,
    "h800": 989.0,
    "gh200": 989.0,
    "a100": 312.0,
    "a800": 312.0,
    "l40s": 362.0,
    "l4": 121.0,
    "a10g": 125.0,
    "a10": 125.0,
    "rtx 4090": 165.0,
    "v100": 125.0,
}


def peak_tflops(device_name: str, dtype: str) -> float | None:
    if dtype not in ("bf16", "fp16"):
        return None
    name = device_name.lower()
    for fragment in sorted(PEAK_TFLOPS_16BIT, key=len, reverse=True):
        if fragment in name:
            return PEAK_TFLOPS_16BIT[fragment]
    return None


def model_flops_utilization(flops_per_s_per_device: float, dtype: str, given_peak_tflops: float, device_name: str) -> float | None:
    """Fraction of the peak (0..1) reached by one device, or None when the peak is unknown."""
    peak = given_peak_tflops or peak_tflops(device_name, dtype)
    return flops_per_s_per_device / (peak * 1e12) if peak else None
