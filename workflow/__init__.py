"""podflow: run ML experiments on rented GPU pods from a config and a sweep CSV.

The package is ``workflow``; the console script is ``wf``. Nothing heavy is imported
here so that ``wf --help`` stays fast.
"""

__version__ = "0.1.0"
