"""Reading, cleaning and storing the document corpus (the `raw_corpus` stage)."""
