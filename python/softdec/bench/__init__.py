"""softdec's benchmark suite, shipped in the package so `softdec bench` runs from an installed wheel.

``harness`` (timing, byte floor, table, JSON, plot), ``runner`` (the `softdec bench` command) and one
``bench_<op>`` module per op family, each defining ``cases(quick, device, full=False)``. The
references the kernels are timed against come from :mod:`softdec.reference`. Nothing here is
imported by ``import softdec``.
"""
