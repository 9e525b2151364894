"""Job service: tables (``models``), migrations (``db``) and the store that is the only
writer of jobs (``store``; see it for how trials count toward a job's budget).

Nothing is imported here: ``tuner.keys`` and the command line read ``models`` without
paying for the store's imports (the engine, torch: seconds).
"""
