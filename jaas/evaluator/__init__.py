"""Jsonnet evaluation in killable processes: pool, worker, importer, manifester."""
