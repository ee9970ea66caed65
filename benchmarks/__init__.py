"""Benchmarks for memnets: a registry of ops, mixers and whole models timed on the present device
(``triton.testing.do_bench`` on GPU, ``torch.utils.benchmark`` on CPU), FLOP estimates, and the
environment header every result file carries. Entry points: ``python -m benchmarks.run``,
``scripts/profile_chunks.py``, ``scripts/bench_train.py``; results in ``benchmarks/RESULTS.md``."""
