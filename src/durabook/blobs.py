"""Content-addressed blobs (shared with the kernel extension, which writes them)."""

from durabook_kernel.blobs import BlobStore, digest

__all__ = ["BlobStore", "digest"]
