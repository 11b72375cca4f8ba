"""Datasets: the tiny synthetic set (``tiny``) and the registry of real ones (``registry``)."""
