"""Test and research scaffolding, shipped for the test suite and the benchmarks (not part of the core).

* :mod:`.synthetic` — synthetic datasets with known truth (blobs, low-rank multi-class);
* :mod:`.phantom` — a cardiac-like phantom for CONSIGN benchmarks;
* :mod:`.paper_loop` — the CONSIGN paper's Algorithm 1+2 loop, the baseline of the speed benchmark;
* :mod:`.guarantees` — repeated-split checks of the conformal guarantees with exact acceptance bands.
"""
