"""Datasets: the tiny synthetic set (``tiny``), the registry of real ones (``registry``) and their hub route (``hub``)."""
