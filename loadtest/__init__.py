"""Load generator and reports: latency percentiles, throughput, purity checks, plots."""
