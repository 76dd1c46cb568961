"""`nox -s bench` (`python -m nc.bench`): costs as ratios against baselines timed in the same run (nc.bench.suite,
the CPU suite; nc.bench.gpu, the GPU suite; nc.bench.cases, what both measure)."""
