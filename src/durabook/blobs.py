"""Content-addressed blobs (shared with the kernel extension, which writes them)."""

from durabook_kernel.blobs import BlobCorrupt, BlobStore, digest

__all__ = ["BlobCorrupt", "BlobStore", "digest"]
