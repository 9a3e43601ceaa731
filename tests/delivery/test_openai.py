"""OpenAI's speech surface in-process: models, voices and aliases, extension fields, chunking of
long input, compressed formats streamed while generating, CORS and the OpenAPI body."""

import base64
import io
import json
import re

import av
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from higgs_tts.core.text import word_count, words_per_chunk
from higgs_tts.delivery.aliases import DEFAULT_PATH, VoiceAliases
from higgs_tts.delivery.app import create_app
from higgs_tts.settings import ServerSettings

OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")


@pytest.fixture
def client(service):
    return TestClient(create_app(service, ServerSettings()), raise_server_exceptions=False)


def speech(client, **body):
    return client.post("/v1/audio/speech", json={"seed": 3, "max_new_tokens": 40, **body})


def decoded_samples(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples, container.streams.audio[0].rate


def test_model_lists(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and {m["object"] for m in listed["data"]} == {"model"}
    assert {"higgs-audio-v2", "tts-1", "tts-1-hd"} <= {m["id"] for m in listed["data"]}
    audio = client.get("/v1/audio/models").json()
    assert [m["id"] for m in audio["models"]] == [m["id"] for m in audio["data"]] == [m["id"] for m in listed["data"]]


def test_audio_voices_lists_the_library_and_the_aliases_that_resolve(client, service):
    voices = client.get("/v1/audio/voices").json()["voices"]
    by_id = {v["id"]: v for v in voices}
    library = {v["name"] for v in service.list_voices()["voices"]}
    assert library <= set(by_id)
    assert set(OPENAI_VOICES) <= set(by_id)  # every default target is in the shared voices
    assert by_id["onyx"]["kind"] == "alias" and by_id["onyx"]["voice"] in library
    assert all({"id", "name", "kind", "description"} <= set(v) for v in voices)
    assert client.get("/v1/voices").json()["voices"] == service.list_voices()["voices"]


def test_default_aliases_name_voices_of_the_shared_library(voice_prompts):
    mapping = VoiceAliases.load().mapping
    assert set(mapping) == set(OPENAI_VOICES)
    from higgs_tts.core.voices import VoiceLibrary

    names = {v.name for v in VoiceLibrary(voice_prompts).list()}
    assert {t for target in mapping.values() for t in target.split(",")} <= names
    assert VoiceAliases.load(DEFAULT_PATH).mapping == mapping


def test_alias_speaks_its_target_and_a_library_voice_wins(client, service):
    via_alias = speech(client, input="Alias check.", voice="onyx", response_format="pcm")
    direct = speech(client, input="Alias check.", voice=VoiceAliases.load().mapping["onyx"], response_format="pcm")
    by_id = speech(client, input="Alias check.", voice={"id": "onyx"}, response_format="pcm")  # OpenAI's object form
    assert via_alias.status_code == by_id.status_code == 200, via_alias.text
    assert via_alias.content == direct.content == by_id.content
    service.synthesizer.voices.add("onyx", np.zeros(24000, dtype=np.float32) + 0.01, "A quiet test clip.")
    own = speech(client, input="Alias check.", voice="onyx", response_format="pcm")
    assert own.status_code == 200 and own.content != via_alias.content


def test_alias_override_file(service, tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("aliases:\n  alloy: chadwick\n  duo: belinda,chadwick\n")
    client = TestClient(create_app(service, ServerSettings(voice_aliases_path=path)))
    ids = {v["id"]: v for v in client.get("/v1/audio/voices").json()["voices"]}
    assert ids["alloy"]["voice"] == "chadwick" and ids["duo"]["voice"] == "belinda,chadwick" and "onyx" not in ids
    path.write_text("aliases:\n  alloy: ../etc\n")
    with pytest.raises(ValueError, match="VOICE_ALIASES_PATH .*alloy"):
        VoiceAliases.load(path)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"voice": "nobody"}, "voice", "unknown voice 'nobody'"),
        ({"voice": {"id": "nobody"}}, "voice", "unknown voice 'nobody'"),
        ({"voice": {"name": "belinda"}}, "voice", 'an object voice is {"id": "<voice name>"}'),
        ({"voice": ["belinda"]}, "voice", "valid string"),
        ({"input": ""}, "input", "input: must not be empty"),
        ({"input": "x" * 20_001}, "input", "input: 20001 characters"),
        ({"colour": "red"}, "colour", "colour"),
        ({"temperature": 9}, "temperature", "temperature"),
        ({"chunk_method": "paragraph"}, "chunk_method", "chunk_method"),
        ({"ref_audio_transcript": "words"}, "ref_audio_transcript", "needs ref_audio_base64"),
        ({"instructions": "a", "scene_prompt": "b"}, "instructions", "not both"),
    ],
)
def test_errors_name_the_request_field(client, body, param, says):
    reply = speech(client, **{"input": "Hello.", **body})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert not re.search(r"\b(ref_audio|transcript|output_format):", error["message"])  # internal names
    assert "Value error" not in error["message"]


def test_extension_fields_reach_generation(client):
    base = dict(input="Knobs on the wire.", response_format="pcm")
    a = speech(client, **base, temperature=0.0, top_k=5)
    b = speech(client, **base, temperature=0.0, top_k=5)
    c = speech(client, **base, temperature=1.5, top_p=0.5, seed=8)
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.content == b.content and a.content != c.content
    short = speech(client, **base, temperature=0.0, top_k=5, max_new_tokens=10)
    assert short.status_code == 200 and 0 < len(short.content) <= 10 * 960 * 2  # 10 frames of 960 samples


def test_known_client_extras_are_accepted(client):
    reply = speech(client, input="Extras.", stream=True, backend="coqui", lang_code="a", response_format="pcm")
    assert reply.status_code == 200, reply.text


def test_reference_clip_as_data_url(client, voice_prompts):
    clip = base64.b64encode((voice_prompts / "belinda.wav").read_bytes()).decode()
    transcript = (voice_prompts / "belinda.txt").read_text().strip()
    uploaded = speech(client, input="Cloned from the body.", response_format="pcm",
                      ref_audio_base64=f"data:audio/wav;base64,{clip}", ref_audio_transcript=transcript)
    named = speech(client, input="Cloned from the body.", voice="belinda", response_format="pcm")
    plain = speech(client, input="Cloned from the body.", response_format="pcm")
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.content != plain.content and named.status_code == 200


def test_several_voices(client):
    reply = speech(client, input="[SPEAKER0] Hello.\n[SPEAKER1] Hi there.", voice="alloy,onyx", response_format="pcm")
    assert reply.status_code == 200, reply.text


@pytest.mark.slow  # over 10 s on two cores
def test_long_input_is_chunked_by_sentences(client):
    text = " ".join(f"Sentence number {i} is here." for i in range(40))  # 40 sentences of 5 words
    limit = words_per_chunk(200)  # words that 200 frames can speak
    assert word_count(text) > limit
    # speed 1.5: a whole response, whose headers count the chunks
    whole = speech(client, input=text, response_format="wav", speed=1.5, max_new_tokens=200)
    assert whole.status_code == 200, whole.text
    assert int(whole.headers["x-text-chunks"]) == 40 // (limit // 5)  # whole sentences, `limit` words a chunk
    one = speech(client, input=text, response_format="wav", speed=1.5, max_new_tokens=200, chunk_method=None)
    assert one.headers["x-text-chunks"] == "1"  # an explicit choice is kept
    short = speech(client, input="Only a few words.", response_format="wav", speed=1.5, max_new_tokens=200)
    assert short.headers["x-text-chunks"] == "1"


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_compressed_formats_stream_and_decode_to_the_whole_clip(client, fmt):
    body = {"input": "Streamed while it is generated.", "response_format": fmt, "seed": 5, "max_new_tokens": 60}
    with client.stream("POST", "/v1/audio/speech", json=body) as reply:
        assert reply.status_code == 200
        pieces = list(reply.iter_raw())
    pcm = client.post("/v1/audio/speech", json={**body, "response_format": "pcm"}).content
    frames = len(pcm) // 2
    samples, rate = decoded_samples(b"".join(pieces))
    expected = frames * rate // 24000
    assert expected <= samples <= expected + 2 * 2048 * rate // 24000  # codec padding at most


def test_sse_of_mp3_streams_deltas(client):
    reply = speech(client, input="Events of mp3.", response_format="mp3", stream_format="sse")
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert events[-1]["type"] == "speech.audio.done"
    assert sf.info(io.BytesIO(audio)).samplerate == 24000


def test_openapi_declares_the_speech_body(client):
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "voice", "temperature", "ref_audio_base64", "chunk_method"} <= set(schema["properties"])
    assert schema["required"] == ["input"]


def test_cors_is_off_by_default_and_answers_preflights_when_configured(service):
    preflight = {"Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    off = TestClient(create_app(service, ServerSettings(api_key="k")))
    assert "access-control-allow-origin" not in off.options("/v1/audio/speech", headers=preflight).headers
    on = TestClient(create_app(service, ServerSettings(api_key="k", cors_origins=("https://chat.example",))))
    reply = on.options("/v1/audio/speech", headers=preflight)
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://chat.example"
    assert "authorization" in reply.headers["access-control-allow-headers"].lower()
    denied = on.get("/v1/models", headers={"Origin": "https://chat.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://chat.example"
    other = on.options("/v1/audio/speech", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_chunk_cut_by_max_new_tokens_is_reported(client):
    # 8 codebooks: the all-EOS column that ends speech needs at least 8 steps, so 5 frames always cut
    cut = speech(client, input="Cut me short.", response_format="wav", stream=False, max_new_tokens=5,
                 chunk_method=None)
    assert cut.status_code == 200 and cut.headers["x-chunks-cut"] == "1"
