"""Side-by-side benchmarks of tuner: ``python -m benchmarks`` (``--smoke`` for toy size).

Modules, one per question: ``time_to_target`` (TPE + ASHA vs no pruning, and
hyperopt), ``train_loop``, ``service_overhead``, ``worker_scaling``, ``api_load``;
``common`` pairs seeds and computes ratio statistics, ``service`` runs real servers,
``report`` writes ``benchmarks/results/``.
"""
