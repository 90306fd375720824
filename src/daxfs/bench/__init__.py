"""``daxfs bench``: the DAX, FUSE and gRPC paths measured against tmpfs, a naive FUSE and memcpy.

``runner`` orders the suites (``memory``, ``fio``, ``meta``, ``cross``) over the
targets of ``mounts``; ``results`` holds figures, paired ratios and digests,
``report`` draws the table and the plot, ``plan`` and ``progress`` size and
narrate a run. ``worker`` is the entry point of the helper processes some
figures need, and ``naive_passthrough`` is the peer the FUSE figures compare
against. Only the ``daxfs bench`` verb (``daxfs.cli.bench``) and tests import
this package.
"""
