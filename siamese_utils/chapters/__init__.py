"""The later chapters' code (comparisons, reranking, widgets, scaling up), the seed's network and the figures."""
