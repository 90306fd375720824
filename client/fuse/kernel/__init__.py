"""The mount's kernel front end: a FUSE daemon that speaks ``fuse_kernel.h`` itself.

No libfuse. :mod:`.protocol` declares the wire format (opcodes, flags,
structs), :mod:`.channel` owns ``/dev/fuse`` and mount(2), :mod:`.nodes` is
the table of node ids the kernel holds (as libfuse's high-level layer keeps
it), :mod:`.dispatch` turns one request into calls on the path-based
:class:`daxfs.client.fuse.operations.DaxfsOperations` and one reply, and
:mod:`.session` runs the serving threads. ``daxfs mount --backend kernel``
uses it (``daxfs.client.fuse.mount``).
"""
