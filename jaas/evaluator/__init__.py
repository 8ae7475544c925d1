"""Jsonnet evaluation in killable processes: pool, worker, importer, manifester.

* ``pool``: ``EvaluatorPool``, used from asyncio; timeouts, memory cap, crash
  reporting and replacement of worker processes.
* ``worker``: the evaluator process (``python -m jaas.evaluator.worker``).
* ``request``: ``EvaluationRequest`` / ``EvaluationResult`` and their frames.
* ``importer``: in-memory import resolution with JaaS's rules.
* ``manifest``: strict parsing of rjsonnet output and go-jsonnet's output format.
"""
