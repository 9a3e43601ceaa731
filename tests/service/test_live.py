"""service/live.py: a LiveSession in process (tiny checkpoint): phrasing, the decoder settling at
pauses, cancel, compressed formats, limits and refused configs."""

import base64
import dataclasses
import io
import time

import av
import numpy as np
import pytest

from higgs_tts.core.voices import VoiceError
from higgs_tts.service.errors import InputError
from higgs_tts.service.live import LiveSession

QUICK = {"ref_audio": "belinda", "seed": 2, "max_new_tokens": 100}  # phrases of at most 5 words


def events_until(session: LiveSession, kind: str, timeout: float = 120) -> list[dict]:
    events = []
    while True:
        event = session.next_event(timeout)
        assert event is not None, f"no {kind} event within {timeout} s: {events[-3:]}"
        assert event["type"] != "error", event
        events.append(event)
        if event["type"] == kind:
            return events


def test_a_pause_in_the_text_holds_no_speech_back(service):
    session = LiveSession(service, QUICK)
    session.text("First one. Sec")
    first = events_until(session, "segment")  # nothing more sent: phrase 0 is decoded to its end
    assert first[-1] == {"type": "segment", "segment": 0, "text": "First one.",
                         "duration_seconds": first[-1]["duration_seconds"]}
    heard = sum(len(e["audio"]) for e in first if e["type"] == "audio") // 2
    assert heard == round(first[-1]["duration_seconds"] * 24000)
    session.text("ond one.")
    session.close()
    rest = events_until(session, "done")
    assert [e["text"] for e in rest if e["type"] == "segment"] == ["Second one."]
    assert rest[-1]["segments"] == 2 and rest[-1]["seed"] == QUICK["seed"]
    assert {e["segment"] for e in rest if e["type"] == "audio"} == {1}


def test_a_phrase_of_no_audio_is_a_segment_at_once(service):
    # Seed 7 ends this phrase at its first frame on the tiny checkpoint: its segment (of 0 s) once
    # waited for the session's end, and a client waiting for it before sending more hung.
    session = LiveSession(service, {**QUICK, "seed": 7})
    session.text("First one. ")
    segment = events_until(session, "segment", timeout=60)[-1]
    assert segment == {"type": "segment", "segment": 0, "text": "First one.", "duration_seconds": 0.0}
    session.close()
    assert events_until(session, "done")[-1]["segments"] == 1


def test_flush_speaks_a_phrase_without_its_sentence_end(service):
    session = LiveSession(service, QUICK)
    session.text("no end yet")
    assert session.next_event(0.5) is None  # waiting for the sentence to end
    session.flush()
    assert events_until(session, "segment")[-1]["text"] == "no end yet"
    session.close()
    assert events_until(session, "done")[-1]["segments"] == 1


def test_cancel_drops_what_waits_and_nothing_stale_comes_after(service):
    session = LiveSession(service, QUICK)
    session.text(" ".join(f"Word {i}." for i in range(20)) + " ")
    assert events_until(session, "audio")[-1]["segment"] == 0
    session.cancel()
    session.text("Fresh start. ")
    session.close()
    after = events_until(session, "done")
    spoken = {e["segment"] for e in after if e["type"] in ("audio", "segment")}
    assert spoken == {20}  # the new phrase only: the cancelled ones' queued audio is dropped too
    assert after[-1]["segments"] == 1


def test_a_compressed_format_is_one_stream(service):
    session = LiveSession(service, {**QUICK, "output_format": "opus"})
    assert session.ready()["response_format"] == "opus"
    session.text("One two. Three four. ")
    session.close()
    events = events_until(session, "done")
    data = b"".join(e["audio"] for e in events if e["type"] == "audio")
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples / 48000 == pytest.approx(events[-1]["duration_seconds"], abs=0.05)  # opus decodes at 48 kHz


def test_a_reference_clip_is_encoded_once_for_the_session(service, voice_prompts):
    clip = base64.b64encode((voice_prompts / "belinda.wav").read_bytes()).decode()
    transcript = (voice_prompts / "belinda.txt").read_text().strip()
    session = LiveSession(service, {"ref_audio_base64": clip, "ref_audio_transcript": transcript, "seed": 3,
                                    "max_new_tokens": 60})
    assert session.ready()["voices"]  # the clip is the session's voice
    session.text("Hello. ")
    session.close()
    assert events_until(session, "done")[-1]["segments"] == 1


def test_limits_and_refused_configs(service):
    small = dataclasses.replace(service.service, live_max_buffered_chars=50)
    service.service = small
    session = LiveSession(service, QUICK)
    with pytest.raises(InputError) as exc:
        session.text("x" * 51)
    assert exc.value.code == "too_long" and "50" in str(exc.value) and "LIVE_MAX_BUFFERED_CHARS" in str(exc.value)
    session.text("y" * 50)  # exactly the limit is taken
    with pytest.raises(InputError, match="text: must not contain"):
        session.text("<|audio_eos|>")
    with pytest.raises(InputError, match="text: must be a string"):
        session.text(None)
    session.cancel()  # the buffer is dropped: room again
    session.text("z" * 50)
    session.close()
    with pytest.raises(InputError, match="closing"):
        session.text("more")
    session.abort()
    for config, field in [({"transcript": "Hi."}, "transcript"), ({"speed": 1.5}, "speed"),
                          ({"chunk_method": "word"}, "chunk_method"), ({"temperature": "hot"}, "temperature"),
                          ({"output_format": "midi"}, "output_format"), ({"bogus": 1}, "bogus")]:
        with pytest.raises(InputError) as exc:
            LiveSession(service, config)
        assert exc.value.field == field, (config, exc.value)
    with pytest.raises(VoiceError):
        LiveSession(service, {"ref_audio": "nobody_here"})


def test_the_pcm_is_sixteen_bit_samples(service):
    session = LiveSession(service, QUICK)
    session.text("Short one. ")
    session.close()
    events = events_until(session, "done")
    audio = np.frombuffer(b"".join(e["audio"] for e in events if e["type"] == "audio"), dtype="<i2")
    assert len(audio) == round(events[-1]["duration_seconds"] * 24000) and np.abs(audio).max() > 0


@pytest.mark.slow  # over 10 s on two cores
def test_a_reader_that_falls_behind_stalls_the_session_and_loses_nothing(service):
    from higgs_tts.service.live import EVENT_QUEUE

    session = LiveSession(service, QUICK)
    session.text(" ".join(f"Word {i}." for i in range(30)) + " ")  # far more events than the queue holds
    session.close()
    deadline = time.monotonic() + 300
    while session._events.qsize() < EVENT_QUEUE:  # nobody reads: the queue fills up ...
        assert time.monotonic() < deadline, "the event queue never filled"
        time.sleep(0.05)
    time.sleep(1.0)
    assert session._events.qsize() == EVENT_QUEUE and session.busy()  # ... and the worker waits, phrases unspoken
    events = events_until(session, "done")
    assert [e["segment"] for e in events if e["type"] == "segment"] == list(range(30))
