"""``pipeplan probe``: micro-benchmark this machine and write a cluster spec fitted to it.

Importing this package loads no torch: the measuring modules (``kernels``, ``layer``, ``links``,
``worker``) import it inside their functions, so the record and the fitting serve a machine without
it.
"""
