"""The daxfs client: the library (zero-copy numpy views of files) and the FUSE mount.

Public contract: :func:`connect`, :class:`Client` (``open``, ``layout`` and the
namespace calls), :class:`DaxFile` (read/readinto/write/pread/pwrite/seek/
truncate/flush/fsync/array/persist).
"""

from daxfs.client.library import Client, DaxFile, connect

__all__ = ["Client", "DaxFile", "connect"]
