#!/usr/bin/env bash
# Run a command with the math libraries capped at AVX2 + FMA, float32: the closest this project can
# come to an AVX2-only CPU (e.g. AMD EPYC) on an AVX-512 / AMX machine. Clock speed, caches and
# other jobs on the machine still differ, so figures measured this way are named as capped, not as
# an AVX2 machine's.
#   scripts/avx2_env.sh python -m benchmarks --quick --cases lite
#   scripts/avx2_env.sh make demo
#   scripts/avx2_env.sh --check   # torch's kernel level and a float32 matrix product's GFLOP/s
# ATEN_CPU_CAPABILITY: torch's own vectorised kernels; MKL_ENABLE_INSTRUCTIONS: MKL (torch's float32
# matrix products); ONEDNN_MAX_CPU_ISA: oneDNN; OPENBLAS_CORETYPE: numpy's OpenBLAS;
# LASER_FAST_CPU_BF16=0: no bfloat16 path (an AVX2 CPU has none). The compiled core needs no cap:
# unless built with LASER_FAST_NATIVE=1 it picks its kernel at run time among fma / avx / default
# (AVX2 + FMA at most; a benchmark's results.json names it under machine.core.kernel).
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell
export LASER_FAST_CPU_BF16=0
if [ "${1:-}" = "--check" ]; then
  exec "${PYTHON:-$(command -v python || command -v python3)}" - <<'PY'
import time, torch
a = torch.randn(2048, 2048)
for _ in range(2):
    a @ a
t = time.perf_counter()
for _ in range(10):
    a @ a
dt = (time.perf_counter() - t) / 10
print(f"torch kernels: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
      f"2048x2048 float32 matmul: {2 * 2048 ** 3 / dt / 1e9:.0f} GFLOP/s")
PY
fi
exec "$@"
