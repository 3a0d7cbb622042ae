"""Everything the pipeline keeps lives under one storage root URI.

folders.py: `Storage`, a folder at any fsspec URI (atomic writes, errors that name the URI).
manifests.py: the manifest every multi-file artifact writes last and readers check first.
names.py: the one naming rule for anything that becomes part of a path.
"""
