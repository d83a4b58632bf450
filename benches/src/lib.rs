//! Sluice benchmarks: pktgen and the runner.
