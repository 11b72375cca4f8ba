"""Tools around the series: the command line, the notebook runner, ``reproduce`` and course assignments."""
