"""Transcript normalization and chunking, with the reference pipeline's semantics.

The model was trained on text normalized this way, so the steps and their order follow the
reference implementation (see docs/model-facts.md, section 4).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from .sampling import ChunkParams

CHUNK_METHODS = ("speaker", "word", "sentence")  # or None: the whole text as one chunk
# Speech runs about 10 frames (0.4 s) a word; a chunk of max_new_tokens / WORD_FRAMES words leaves
# twice that room, so slow or long words are not cut (2048 frames: chunks of 102 words).
SPEECH_WORD_FRAMES = 10
WORD_FRAMES = 2 * SPEECH_WORD_FRAMES

# Full-width / CJK punctuation to ASCII, as the reference pipeline maps it.
_CJK_PUNCTUATION = {
    "，": ", ",
    "。": ".",
    "：": ":",
    "；": ";",
    "？": "?",
    "！": "!",
    "（": "(",
    "）": ")",
    "【": "[",
    "】": "]",
    "《": "<",
    "》": ">",
    "“": '"',
    "”": '"',
    "‘": "'",
    "’": "'",
    "、": ",",
    "—": "-",
    "…": "...",
    "·": ".",
    "「": '"',
    "」": '"',
    "『": '"',
    "』": '"',
}

# Sound-effect tags the model knows, in the reference order.
_SOUND_EFFECTS = (
    ("[laugh]", "<SE>[Laughter]</SE>"),
    ("[humming start]", "<SE_s>[Humming]</SE_s>"),
    ("[humming end]", "<SE_e>[Humming]</SE_e>"),
    ("[music start]", "<SE_s>[Music]</SE_s>"),
    ("[music end]", "<SE_e>[Music]</SE_e>"),
    ("[music]", "<SE>[Music]</SE>"),
    ("[sing start]", "<SE_s>[Singing]</SE_s>"),
    ("[sing end]", "<SE_e>[Singing]</SE_e>"),
    ("[applause]", "<SE>[Applause]</SE>"),
    ("[cheering]", "<SE>[Cheering]</SE>"),
    ("[cough]", "<SE>[Cough]</SE>"),
)

_TERMINATORS = (".", "!", "?", ",", ";", '"', "'", "</SE_e>", "</SE>")

SPEAKER_TAG = re.compile(r"\[(SPEAKER\d+)\]")


def normalize_punctuation(text: str) -> str:
    for cjk, ascii_ in _CJK_PUNCTUATION.items():
        text = text.replace(cjk, ascii_)
    return text


def normalize_transcript(text: str) -> str:
    """Apply the reference normalization steps, in order."""
    text = normalize_punctuation(text)
    text = text.replace("(", " ").replace(")", " ")
    text = text.replace("°F", " degrees Fahrenheit").replace("°C", " degrees Celsius")
    for tag, replacement in _SOUND_EFFECTS:
        text = text.replace(tag, replacement)
    lines = [" ".join(line.split()) for line in text.split("\n") if line.strip()]
    text = "\n".join(lines).strip()
    if text and not text.endswith(_TERMINATORS):
        text += "."
    return text


def speakable(text: str) -> bool:
    """Whether a normalized text has anything to say: a letter or digit outside its speaker tags
    (zero-width characters, punctuation or tags alone say nothing)."""
    return any(c.isalnum() for c in SPEAKER_TAG.sub("", text))


def speaker_tags(text: str) -> list[str]:
    """Distinct `[SPEAKERn]` tags in the text, sorted as the reference does (`SPEAKER0`, ...)."""
    return sorted(set(SPEAKER_TAG.findall(text)))


@lru_cache(maxsize=1)
def _langid():
    import langid

    return langid


def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's language (the reference uses langid too)."""
    return _langid().classify(text)[0]


def _jieba_words(text: str) -> list[str]:
    import jieba

    jieba.setLogLevel(60)  # its dictionary-loading chatter goes to stderr otherwise
    return list(jieba.cut(text, cut_all=False))


def _words(text: str, language: str) -> list[str]:
    if language == "zh":
        return [w for w in _jieba_words(text) if w.strip()]
    return text.split()


def _join_words(words: Iterable[str], language: str) -> str:
    return ("" if language == "zh" else " ").join(words)


def word_count(text: str) -> int:
    """Words of the text (Chinese counted by jieba's words), as the chunkers count them."""
    return len(_words(text, detect_language(text)))


def words_per_chunk(max_new_tokens: int) -> int:
    """The most words a chunk may have to be spoken within `max_new_tokens` frames."""
    return max(1, max_new_tokens // WORD_FRAMES)


def chunk_by_speaker(text: str, max_num_turns: int = ChunkParams.chunk_max_num_turns) -> list[str]:
    """A new chunk at each line starting with a speaker tag; merge `max_num_turns` turns."""
    turns: list[str] = []
    current = ""
    for raw in text.split("\n"):
        line = raw.strip()
        if line.startswith("[SPEAKER") or line.startswith("<|speaker_id_start|>"):
            if current:
                turns.append(current.strip())
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        turns.append(current.strip())
    if max_num_turns > 1:
        return ["\n".join(turns[i : i + max_num_turns]) for i in range(0, len(turns), max_num_turns)]
    return turns


def chunk_by_word(text: str, max_word_num: int = ChunkParams.chunk_max_word_num) -> list[str]:
    """Every `max_word_num` words per paragraph; Chinese is split into words by jieba."""
    language = detect_language(text)
    chunks: list[str] = []
    for paragraph in text.split("\n\n"):
        if language == "zh":
            words = _jieba_words(paragraph)
        else:
            words = paragraph.split(" ")
        for i in range(0, len(words), max_word_num):
            chunks.append(_join_words(words[i : i + max_word_num], language).strip())
    return [c for c in chunks if c]


# A sentence ends after a run of terminal punctuation (plus closing quotes/brackets) that is
# followed by whitespace, the end of text or a CJK character; a newline always ends one.
_SENTENCE_END = re.compile(r"""[.!?]+["')\]]*(?=\s|$)|[.!?]+(?=[\u3000-\u9fff])|\n""")


def split_sentences(text: str) -> list[tuple[str, bool]]:
    """Sentences of the text, each with whether a line break followed it."""
    sentences: list[tuple[str, bool]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[start : match.end()].strip()
        line_break = match.group() == "\n" or text[match.end() : match.end() + 1] == "\n"
        if piece:
            sentences.append((piece, line_break))
        elif line_break and sentences:
            sentences[-1] = (sentences[-1][0], True)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append((tail, False))
    return sentences


def chunk_by_sentence(text: str, max_word_num: int = ChunkParams.chunk_max_word_num) -> list[str]:
    """Chunks of at most `max_word_num` words that end on sentence boundaries.

    Sentences are packed greedily; a sentence longer than the limit on its own is split by words.
    """
    language = detect_language(text)
    space = "" if language == "zh" else " "
    chunks: list[str] = []
    current, current_words = "", 0

    def flush() -> None:
        nonlocal current, current_words
        if current.strip():
            chunks.append(current.strip())
        current, current_words = "", 0

    for sentence, line_break in split_sentences(text):
        words = _words(sentence, language)
        if len(words) > max_word_num:
            flush()
            for i in range(0, len(words), max_word_num):
                chunks.append(_join_words(words[i : i + max_word_num], language))
            continue
        if current_words + len(words) > max_word_num:
            flush()
        if current and not current.endswith("\n"):
            current += space
        current += sentence + ("\n" if line_break else "")
        current_words += len(words)
    flush()
    return chunks


def chunk_text(
    text: str,
    method: str | None = None,
    max_word_num: int = ChunkParams.chunk_max_word_num,
    max_num_turns: int = ChunkParams.chunk_max_num_turns,
) -> list[str]:
    """Split normalized text into generation chunks with the given method."""
    if method is None:
        return [text]
    if method == "speaker":
        return chunk_by_speaker(text, max_num_turns)
    if method == "word":
        return chunk_by_word(text, max_word_num)
    if method == "sentence":
        return chunk_by_sentence(text, max_word_num)
    raise ValueError(f"chunk_method must be null or one of {', '.join(CHUNK_METHODS)}; got {method!r}")


# A live phrase without spaces (Chinese, Japanese) is bounded by characters: this many a word.
PHRASE_CHARS_PER_WORD = 4


def cut_phrases(buffer: str, max_words: int) -> tuple[list[str], str]:
    """Complete phrases at the front of text still being written, and the rest to wait on.

    A phrase ends at a sentence end that something follows (a final "." may yet become "3.5" or
    "..."), or a line break; a run longer than `max_words` words (or `max_words` *
    PHRASE_CHARS_PER_WORD characters without spaces) is cut after that many complete words.
    """
    phrases: list[str] = []
    end = 0
    for match in _SENTENCE_END.finditer(buffer):
        if match.end() < len(buffer) or match.group() == "\n":
            end = match.end()
    if end:
        phrases = [sentence for sentence, _ in split_sentences(buffer[:end])]
    rest = buffer[end:]
    while True:
        words = re.findall(r"\S+\s+", rest)  # words that something follows: complete
        if len(words) > max_words:
            cut = sum(len(w) for w in words[:max_words])
        elif " " not in rest.strip() and len(rest) > max_words * PHRASE_CHARS_PER_WORD:
            cut = max_words * PHRASE_CHARS_PER_WORD
        else:
            return phrases, rest
        if rest[:cut].strip():
            phrases.append(rest[:cut].strip())
        rest = rest[cut:]
