"""The FUSE edge: a daxfs mount, translating the kernel's requests to the client core.

``operations.py`` turns each FUSE operation into calls of the client core
(``daxfs.client.library``: ``Client`` verbs acting for the calling process,
``DaxFile`` I/O) and maps daxfs errors to errnos; ``kernel/`` is the daemon
that speaks the kernel's FUSE protocol itself (``--backend kernel``);
``mount.py`` runs either daemon (libfuse through mfusepy, or the kernel one)
and unmounts. Nothing in the client core imports this package.
"""
