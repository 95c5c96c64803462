"""Schedulers: request validation, the batching queue, response ordering, ensembles."""
