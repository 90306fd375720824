"""daxfs: a shared-memory guest/host filesystem.

The host server (``daxfs.server``) owns a memory region and answers, over gRPC,
which range of the region holds which bytes of a file; guests
(``daxfs.client``) map the region and load and store those bytes themselves.
"""

__version__ = "0.1.0"
