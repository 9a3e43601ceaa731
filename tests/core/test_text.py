import pytest

from higgs_tts.core.text import (
    chunk_text,
    detect_language,
    normalize_transcript,
    speaker_tags,
    split_sentences,
)


class TestNormalize:
    def test_cjk_punctuation_becomes_ascii(self):
        assert normalize_transcript("你好，世界。对吗？好！是：的；一、二…") == "你好, 世界.对吗?好!是:的;一,二..."

    def test_parentheses_become_spaces_and_whitespace_collapses(self):
        assert normalize_transcript("Hello (quietly) there") == "Hello quietly there."

    def test_temperatures_are_spelled_out(self):
        assert normalize_transcript("It is 70°F or 21°C") == "It is 70 degrees Fahrenheit or 21 degrees Celsius."

    @pytest.mark.parametrize(
        ("tag", "expected"),
        [
            ("[laugh]", "<SE>[Laughter]</SE>"),
            ("[music start]", "<SE_s>[Music]</SE_s>"),
            ("[music end]", "<SE_e>[Music]</SE_e>"),
            ("[humming start]", "<SE_s>[Humming]</SE_s>"),
            ("[cough]", "<SE>[Cough]</SE>"),
            ("[applause]", "<SE>[Applause]</SE>"),
        ],
    )
    def test_sound_effect_tags(self, tag, expected):
        assert normalize_transcript(f"Well {tag} then.") == f"Well {expected} then."

    def test_no_period_after_a_closing_sound_effect(self):
        # `</SE>` and `</SE_e>` end an utterance; a starting `</SE_s>` tag does not (as upstream).
        assert normalize_transcript("Ha [laugh]") == "Ha <SE>[Laughter]</SE>"
        assert normalize_transcript("La [music end]") == "La <SE_e>[Music]</SE_e>"
        assert normalize_transcript("La [music start]") == "La <SE_s>[Music]</SE_s>."

    def test_empty_lines_dropped_and_lines_kept(self):
        assert normalize_transcript("  first   line \n\n\n  second line  ") == "first line\nsecond line."

    @pytest.mark.parametrize("ending", [".", "!", "?", ",", ";", '"', "'"])
    def test_no_period_after_terminal_punctuation(self, ending):
        assert normalize_transcript(f"Done{ending}") == f"Done{ending}"

    def test_period_appended(self):
        assert normalize_transcript("No ending") == "No ending."

    def test_speaker_tags_stay(self):
        text = normalize_transcript("[SPEAKER0] Hi.\n[SPEAKER1] Hello.")
        assert text == "[SPEAKER0] Hi.\n[SPEAKER1] Hello."
        assert speaker_tags(text) == ["SPEAKER0", "SPEAKER1"]

    def test_blank_text_stays_empty(self):
        assert normalize_transcript(" \n \t ") == ""


class TestChunking:
    def test_none_is_one_chunk(self):
        assert chunk_text("a b c.\nd e.", None) == ["a b c.\nd e."]

    def test_speaker_chunks_start_at_tags(self):
        text = "[SPEAKER0] One.\nstill one.\n[SPEAKER1] Two.\n[SPEAKER0] Three."
        assert chunk_text(text, "speaker") == [
            "[SPEAKER0] One.\nstill one.",
            "[SPEAKER1] Two.",
            "[SPEAKER0] Three.",
        ]

    def test_speaker_chunks_merge_turns(self):
        text = "[SPEAKER0] One.\n[SPEAKER1] Two.\n[SPEAKER0] Three."
        assert chunk_text(text, "speaker", max_num_turns=2) == [
            "[SPEAKER0] One.\n[SPEAKER1] Two.",
            "[SPEAKER0] Three.",
        ]

    def test_word_chunks_cut_every_n_words(self):
        text = "one two three four five six seven."
        assert chunk_text(text, "word", max_word_num=3) == ["one two three", "four five six", "seven."]

    def test_word_chunks_chinese_use_jieba_words(self):
        text = "我们今天去公园散步，然后一起吃晚饭。"
        assert detect_language(text) == "zh"
        chunks = chunk_text(text, "word", max_word_num=3)
        assert "".join(chunks) == text
        # A real segmenter groups characters into words: fewer chunks than characters / 3.
        assert 1 < len(chunks) < len(text) / 3
        assert "我们" in chunks[0]

    def test_sentence_chunks_end_on_sentence_boundaries(self):
        text = "One two three. Four five. Six seven eight nine. Ten."
        chunks = chunk_text(text, "sentence", max_word_num=5)
        assert chunks == ["One two three. Four five.", "Six seven eight nine. Ten."]
        assert all(c.endswith(".") for c in chunks)

    def test_sentence_chunks_split_an_overlong_sentence_by_words(self):
        text = "Short one. This sentence has far too many words to fit. End."
        chunks = chunk_text(text, "sentence", max_word_num=4)
        assert chunks == ["Short one.", "This sentence has far", "too many words to", "fit.", "End."]
        assert all(len(c.split()) <= 4 for c in chunks)

    def test_sentence_chunks_keep_line_breaks(self):
        text = "[SPEAKER0] Hi there.\n[SPEAKER1] Hello you."
        assert chunk_text(text, "sentence", max_word_num=50) == [text]

    def test_sentence_chunks_chinese(self):
        text = "今天天气很好.我们去公园散步吧.然后一起吃晚饭."
        chunks = chunk_text(text, "sentence", max_word_num=6)
        assert "".join(chunks) == text
        assert len(chunks) >= 2 and all(c.endswith(".") for c in chunks)

    def test_split_sentences(self):
        assert split_sentences('He said "go." Then left! Why?') == [
            ('He said "go."', False), ("Then left!", False), ("Why?", False)
        ]

    def test_unknown_method_is_rejected(self):
        with pytest.raises(ValueError, match="chunk_method"):
            chunk_text("x.", "paragraph")


def test_cut_phrases_waits_for_what_follows_a_sentence_end():
    from higgs_tts.core.text import cut_phrases

    assert cut_phrases("Hello. Wor", 10) == (["Hello."], " Wor")
    assert cut_phrases("Hello.", 10) == ([], "Hello.")  # may yet become "Hello..." or "Hello.5"
    assert cut_phrases("Pi is 3.5 and", 10) == ([], "Pi is 3.5 and")
    assert cut_phrases("One. Two? Three! Four", 10) == (["One.", "Two?", "Three!"], " Four")
    assert cut_phrases("a line\nnext", 10) == (["a line"], "next")
    assert cut_phrases('He said "stop." Then', 10) == (['He said "stop."'], " Then")


def test_cut_phrases_bounds_long_runs_without_a_sentence_end():
    from higgs_tts.core.text import PHRASE_CHARS_PER_WORD, cut_phrases

    assert cut_phrases("a b c d e f g h", 3) == (["a b c", "d e f"], "g h")  # "h" may go on
    assert cut_phrases("a b c d", 3) == ([], "a b c d")  # cut once more than 3 words are complete
    spaceless = "字" * (2 * PHRASE_CHARS_PER_WORD + 3)
    phrases, rest = cut_phrases(spaceless, 2)
    assert phrases == ["字" * (2 * PHRASE_CHARS_PER_WORD)] and rest == "字" * 3
