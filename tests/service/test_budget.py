"""The work budget: chunks, chunks x max_new_tokens and an inline result's size, refused by name
before any work (the model is not even loaded)."""

import dataclasses

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.core.sampling import SamplingParams
from higgs_tts.core.text import chunk_text, word_count, words_per_chunk
from higgs_tts.service.budget import Work, check_work
from higgs_tts.service.schema import parse_input
from higgs_tts.service.speech import SpeechService
from higgs_tts.settings import ServiceSettings
from higgs_tts.synthesis.synthesizer import Synthesizer


def unloadable(service, tmp_path, **limits) -> SpeechService:
    """The service with a model that cannot load: whatever gets past the checks fails model_unavailable."""
    broken = dataclasses.replace(service.settings, model_path=str(tmp_path / "absent"))
    return SpeechService(broken, dataclasses.replace(service.service, **limits), Synthesizer(broken, ModelCache()))


def test_ten_thousand_one_word_chunks_are_refused_by_their_count(service, tmp_path):
    text = " ".join(["a"] * 10_000)  # 19,999 characters: within MAX_TRANSCRIPT_CHARS
    response = unloadable(service, tmp_path).handle(
        {"transcript": text, "chunk_method": "word", "chunk_max_word_num": 1})
    assert response["error_code"] == "too_long" and response["error_field"] == "transcript"
    assert "10000 chunks" in response["error"] and "200" in response["error"] and "MAX_CHUNKS" in response["error"]
    assert "chunk_max_word_num" in response["error"]


def test_a_hundred_chunks_at_8192_frames_are_refused_by_their_frames(service, tmp_path):
    text = " ".join(["word"] * 100)
    response = unloadable(service, tmp_path).handle(
        {"transcript": text, "chunk_method": "word", "chunk_max_word_num": 1, "max_new_tokens": 8192})
    assert response["error_code"] == "too_long" and response["error_field"] == "max_new_tokens"
    assert "100 chunks (chunk_method 'word') x max_new_tokens 8192 = 819200 frames" in response["error"]
    assert "250000" in response["error"] and "MAX_TOTAL_FRAMES" in response["error"]
    assert "raise chunk_max_word_num" in response["error"] and "chosen because" not in response["error"]


def test_a_long_dialogue_without_a_chunk_method_packs_whole_turns_and_says_the_choice_was_automatic(service,
                                                                                                   tmp_path):
    """130 turns of 7 words (the tag counts) at max_new_tokens 2048 (102 words a chunk): 14 whole turns a chunk,
    10 chunks (one a turn would be 130 x 2048 frames, refused). When even that is too much, the refusal says
    the method was chosen for the caller, and how to keep one chunk."""
    dialogue = "\n".join(f"[SPEAKER{i % 2}] This is turn number {i} here." for i in range(130))
    assert words_per_chunk(2048) == 102 and word_count("[SPEAKER1] This is turn number 129 here.") == 7
    planned = service.plan(parse_input({"transcript": dialogue}))
    assert planned.synthesis.chunk_method == "speaker" and planned.synthesis.chunk_max_num_turns == 14
    assert len(planned.plan.chunks) == 10 and all(c.startswith("[SPEAKER") for c in planned.plan.chunks)
    assert max(word_count(c) for c in planned.plan.chunks) <= 102
    refused = unloadable(service, tmp_path, max_total_frames=4096).handle({"transcript": dialogue})
    assert refused["error_code"] == "too_long" and refused["error_field"] == "max_new_tokens", refused
    assert "chunk_method 'speaker', chosen because the text is longer than one chunk" in refused["error"]
    assert "chunk_method null keeps one chunk" in refused["error"] and "raise chunk_max_num_turns" in refused["error"]


def test_the_limits_come_from_the_settings(service, tmp_path):
    text = "One. Two. Three."
    request = {"transcript": text, "chunk_method": "sentence", "chunk_max_word_num": 1}
    assert unloadable(service, tmp_path, max_chunks=2).handle(request)["error_code"] == "too_long"
    # within the limits the request gets as far as the model (which cannot load here)
    assert unloadable(service, tmp_path, max_chunks=3).handle(request)["error_code"] == "model_unavailable"
    framed = {**request, "max_new_tokens": 100}
    assert unloadable(service, tmp_path, max_total_frames=299).handle(framed)["error_field"] == "max_new_tokens"
    assert unloadable(service, tmp_path, max_total_frames=300).handle(framed)["error_code"] == "model_unavailable"


def test_a_result_too_large_for_inline_is_refused_before_generation(service, tmp_path):
    text = " ".join(["word"] * 400)  # about 400 x 10 frames = 160 s of speech: 7.7 MB as wav
    limited = unloadable(service, tmp_path, max_inline_audio_bytes=5_000_000)
    response = limited.handle({"transcript": text, "chunk_method": "word", "chunk_max_word_num": 100})
    assert response["error_code"] == "result_too_large" and response["error_field"] == "output_format"
    assert "about 7.7 MB as wav" in response["error"] and "s3_bucket" in response["error"]
    # mp3 fits: the request goes on (to the model, which cannot load here)
    mp3 = limited.handle({"transcript": text, "chunk_method": "word", "chunk_max_word_num": 100,
                          "output_format": "mp3"})
    assert mp3["error_code"] == "model_unavailable"


def test_with_an_s3_bucket_a_large_result_is_not_refused_early(service, tmp_path):
    text = " ".join(["word"] * 400)
    limited = unloadable(service, tmp_path, max_inline_audio_bytes=5_000_000)
    response = limited.handle({"transcript": text, "chunk_method": "word", "chunk_max_word_num": 100,
                               "s3_bucket": "speech-out"})
    assert response["error_code"] == "model_unavailable"


def test_expected_size_is_bounded_by_max_new_tokens_and_scales_with_speed():
    work = Work(chunks=1, max_frames=250, expected_frames=250)  # 10 s
    assert work.expected_bytes("wav") == 480_000
    assert work.expected_bytes("wav", speed=2.0) == 240_000
    assert work.expected_bytes("mp3") < work.expected_bytes("flac")


def test_default_limits_let_the_longest_default_chunked_text_through():
    # The longest transcript the defaults accept (MAX_TRANSCRIPT_CHARS of ordinary English), chunked as the
    # OpenAI route chunks a long input (sentences of at most words_per_chunk(max_new_tokens) words), passes
    # both limits: check_work raises InputError otherwise.
    limits = ServiceSettings()
    sentence = "The quick brown fox jumps over the lazy dog beside the quiet river bank. "
    text = (sentence * (limits.max_transcript_chars // len(sentence) + 1))[: limits.max_transcript_chars]
    max_new_tokens = SamplingParams.max_new_tokens
    chunks = chunk_text(text, "sentence", max_word_num=words_per_chunk(max_new_tokens))
    work = check_work(chunks, max_new_tokens, "sentence", limits)
    assert work.chunks == len(chunks) > 1
    assert work.max_frames == len(chunks) * max_new_tokens <= limits.max_total_frames
