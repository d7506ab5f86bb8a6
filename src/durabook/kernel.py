"""``%load_ext durabook.kernel``: the IPython extension, whose code lives in ``kernel_ext/``.

See :mod:`durabook_kernel`. This module only re-exports it, so the name users
type stays ``durabook.kernel`` while kernels import nothing heavy.
"""

from durabook_kernel import drive, load_ipython_extension, unload_ipython_extension

__all__ = ["drive", "load_ipython_extension", "unload_ipython_extension"]
