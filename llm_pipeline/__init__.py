"""llm-pipeline: raw text to a published, evaluated language model as one Dagster asset graph.

The subpackages corpus/, tokenize/, train/, evaluate/, publish/ and storage/ are the library and
never import dagster; assets/, resources.py, automation.py and definitions.py wire them into Dagster.
"""

__version__ = "0.1.0"
