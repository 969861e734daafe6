// One core's FP32 FMA throughput, measured: the peak itera-bench's GFLOP/s are compared with.
#pragma once

// GFLOP/s of 512-bit (wide) or 256-bit FMAs on the calling thread: the best of five runs of a few
// milliseconds each. The clock /proc/cpuinfo reports is the base clock, not the boost clock a
// single busy core runs at, so an estimate from it understates the peak (166 vs about 255 GFLOP/s
// on the EPYC of docs/bench.md).
double measured_fma_peak_gflops(bool wide);
