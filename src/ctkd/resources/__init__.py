"""Data files shipped inside the package (see each folder's NOTICE for origin and licence).

- ``qed/``: a small QED subset (200 train, 40 validation rows, original format) for the built-in
  default run; located with :func:`ctkd.data.builtin_data_dir`.
"""
