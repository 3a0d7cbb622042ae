"""A whitespace word tokenizer for datatrove: the same word split as ours (`str.split`), for a like-for-like benchmark.

Sentences (datatrove's C4 filter counts them through `span_tokenize`) are split by the library's own
rule (`cleaning.text.sentence_spans`: a run of . ! ? before whitespace), so both sides count the same
sentences, as they count the same words.
"""

from datatrove.utils.lid import FT176LID
from datatrove.utils.word_tokenizers import WordTokenizer

from llm_pipeline.corpus.cleaning.text import sentence_spans


class WhitespaceTokenizer(WordTokenizer):
    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b].strip() for a, b in sentence_spans(text)]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return sentence_spans(text)


class LocalLid176(FT176LID):
    """datatrove's fastText language ID on the lid.176.ftz our language step ships (datatrove's own
    downloads lid.176.bin); module-level so datatrove's worker processes can unpickle it."""

    @property
    def model(self):
        if self._model is None:
            from llm_pipeline.corpus.cleaning.language import _model

            self._model = _model()
        return self._model
