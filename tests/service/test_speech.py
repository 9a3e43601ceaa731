"""The speech service on the tiny checkpoint, real S3 server and real audio files."""

import base64
import dataclasses
import io
import json
import shutil

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_bucket

from higgs_tts.core.checkpoint import ModelCache
from higgs_tts.service.events import Audio
from higgs_tts.service.speech import SpeechService
from higgs_tts.synthesis.synthesizer import Synthesizer


def b64_file(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def b64_audio(seconds: float, rate: int = 16000, fmt: str = "FLAC") -> str:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 200 * t), rate, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def decoded_audio(response):
    return sf.read(io.BytesIO(base64.b64decode(response["audio_base64"])), dtype="float32")


BASE = {"max_new_tokens": 40, "seed": 3}


def test_generate_inline_has_every_documented_field(service):
    response = service.handle({"transcript": "Hello there", "ref_audio": "belinda", **BASE}, "job-1")
    assert response["success"] is True
    audio, rate = decoded_audio(response)
    assert rate == 24000 == response["sample_rate"]
    assert response["content_type"] == "audio/wav"
    assert response["duration_seconds"] == pytest.approx(len(audio) / 24000, abs=1e-3)
    assert response["text_output"] == "Hello there."
    metadata = response["metadata"]
    assert metadata["voice_clone"] == "belinda"
    assert metadata["voices"] == [{"name": "belinda", "kind": "clone"}]
    params = metadata["generation_parameters"]
    assert (params["temperature"], params["top_k"], params["top_p"], params["max_new_tokens"], params["seed"]) == (
        0.8, 50, 0.95, 40, 3)
    assert params["chunks_processed"] == 1 and params["generation_time"] > 0
    metrics = response["generation_metrics"]
    for key in ("total_request_time", "model_loading_time", "generation_time", "s3_upload_time",
                "audio_duration", "chunks_processed", "real_time_factor"):
        assert key in metrics
    assert metrics["s3_upload_time"] == 0 and metrics["total_request_time"] >= metrics["generation_time"]
    assert {"name": "daffy", "description": "Animated character voice"} in response["voice_suggestions"]
    assert "audio_url" not in response


def test_no_voice_reports_null_voice_clone(service):
    response = service.handle({"transcript": "Anyone speaks.", **BASE})
    assert response["success"] and response["metadata"]["voice_clone"] is None
    assert response["metadata"]["voices"] == []


def test_voice_clone_names_only_cloned_voices_and_voices_says_which_were_described(service):
    response = service.handle({"transcript": "[SPEAKER0] One. [SPEAKER1] Two. [SPEAKER2] Three.",
                               "ref_audio": "belinda,daffy,chadwick", **BASE})
    assert response["success"], response
    metadata = response["metadata"]
    assert metadata["voice_clone"] == "belinda,chadwick"  # daffy has no clip: described only
    assert metadata["voices"] == [{"name": "belinda", "kind": "clone"}, {"name": "daffy", "kind": "described"},
                                  {"name": "chadwick", "kind": "clone"}]


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus", "pcm"])
def test_output_formats(service, fmt):
    response = service.handle({"transcript": "Format test.", "output_format": fmt, **BASE})
    assert response["success"], response
    data = base64.b64decode(response["audio_base64"])
    if fmt == "pcm":
        assert len(data) == 2 * round(response["duration_seconds"] * 24000)
    else:
        assert sf.read(io.BytesIO(data))[1] == 24000


def test_clone_from_base64_with_and_without_transcript(service, voice_prompts):
    clip = b64_file(voice_prompts / "en_man.wav")
    with_text = service.handle({"transcript": "Cloned.", "ref_audio_base64": clip,
                                "ref_audio_transcript": "Maintaining your ability to learn.", **BASE})
    without = service.handle({"transcript": "Cloned.", "ref_audio_base64": clip, **BASE})
    assert with_text["success"] and without["success"]
    assert with_text["metadata"]["voice_clone"] == "uploaded"


def test_add_voice_then_use_it_by_name(service):
    added = service.handle({"action": "add_voice", "voice_name": "narrator_1", "ref_audio_base64": b64_audio(2.0),
                            "ref_audio_transcript": "A steady narrator voice."})
    assert added["success"], added
    assert added["voice"] == {"name": "narrator_1", "kind": "clone", "description": "Voice cloned from narrator_1.wav"}
    stored, rate = sf.read(service.settings.voice_prompts_path / "narrator_1.wav")
    assert rate == 24000 and stored.ndim == 1
    used = service.handle({"transcript": "Now by name.", "ref_audio": "narrator_1", **BASE})
    assert used["success"] and used["metadata"]["voice_clone"] == "narrator_1"
    again = service.handle({"action": "add_voice", "voice_name": "narrator_1", "ref_audio_base64": b64_audio(1.0),
                            "ref_audio_transcript": "Other."})
    assert not again["success"] and again["error_code"] == "voice_exists" and "overwrite" in again["error"]
    replaced = service.handle({"action": "add_voice", "voice_name": "narrator_1", "ref_audio_base64": b64_audio(1.0),
                               "ref_audio_transcript": "Other.", "overwrite": True})
    assert replaced["success"] and replaced["duration_seconds"] == pytest.approx(1.0, abs=0.01)


def test_add_voice_gives_a_documented_voice_its_audio(service):
    added = service.handle({"action": "add_voice", "voice_name": "jorts", "ref_audio_base64": b64_audio(1.5),
                            "ref_audio_transcript": "Hey, what's up."})
    assert added["voice"] == {"name": "jorts", "kind": "clone", "description": "Male voice with casual tone"}


@pytest.mark.parametrize(
    ("extra", "field", "code", "message"),
    [
        ({"ref_audio": "nobody"}, "ref_audio", "unknown_voice", "unknown voice 'nobody'"),
        ({"ref_audio_base64": "bm90IGF1ZGlv"}, "ref_audio_base64", "invalid_input", "cannot decode audio"),
        ({"ref_audio_base64": b64_audio(61.0, rate=8000)}, "ref_audio_base64", "too_long", "limit is 60 s"),
        ({"ref_audio_transcript": "words"}, "ref_audio_transcript", "invalid_input", "needs ref_audio_base64"),
        ({"transcript": "x" * 20_001}, "transcript", "too_long", "limit of 20000"),
        ({"transcript": "( )"}, "transcript", "invalid_input", "nothing to speak"),
        ({"transcript": "\u200b\u200b"}, "transcript", "invalid_input", "nothing to speak"),
        ({"transcript": "[SPEAKER0] [SPEAKER1]"}, "transcript", "invalid_input", "nothing to speak"),
    ],
)
def test_bad_requests_fail_clearly(service, extra, field, code, message):
    response = service.handle({"transcript": "Hi.", **BASE, **extra})
    assert response["success"] is False
    assert (response["error_field"], response["error_code"]) == (field, code)
    assert message in response["error"]
    if code == "unknown_voice":
        assert any(s["name"] == "belinda" for s in response["voice_suggestions"])


def test_oversized_reference_is_refused_before_decoding(service):
    small = dataclasses.replace(service.service, max_reference_bytes=1000)
    limited = SpeechService(service.settings, small, service.synthesizer)
    response = limited.handle({"transcript": "Hi.", "ref_audio_base64": b64_audio(1.0), **BASE})
    assert response["error_code"] == "too_large" and "at most 1000 bytes" in response["error"]


def test_s3_upload_object_and_presigned_url(service, s3_env):
    make_bucket(s3_env, "speech-out")
    response = service.handle({"transcript": "Upload me.", "s3_bucket": "speech-out", "s3_key": "jobs/one.flac",
                               "output_format": "flac", **BASE})
    assert response["success"], response
    assert response["audio_url"] == "s3://speech-out/jobs/one.flac"
    assert "audio_base64" not in response
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    stored = client.get_object(Bucket="speech-out", Key="jobs/one.flac")
    body = stored["Body"].read()
    assert stored["ContentType"] == "audio/flac"
    assert sf.read(io.BytesIO(body))[1] == 24000
    assert httpx.get(response["presigned_url"]).content == body
    assert response["generation_metrics"]["s3_upload_time"] > 0
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(response)


def test_s3_without_key_generates_one(service, s3_env):
    make_bucket(s3_env, "speech-auto")
    response = service.handle({"transcript": "Auto key.", "s3_bucket": "speech-auto", **BASE})
    assert response["audio_url"].startswith("s3://speech-auto/higgs-tts/") and response["audio_url"].endswith(".wav")


def test_failed_upload_keeps_the_audio_inline(service, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    service.storage.timeout_seconds = 2
    response = service.handle({"transcript": "Keep me.", "s3_bucket": "speech-out", **BASE})
    assert response["success"] is True
    assert "s3_upload_error" in response and "audio_url" not in response
    assert decoded_audio(response)[1] == 24000


def test_malformed_endpoint_in_s3_config_keeps_the_audio(service):
    response = service.handle({"transcript": "Still here.", "s3_bucket": "speech-out", **BASE}, "j",
                              {"endpointUrl": "https://bad host", "accessId": "a", "accessSecret": "s"})
    assert response["success"] is True and "s3_upload_error" in response
    assert decoded_audio(response)[1] == 24000


def test_result_too_large_for_inline_suggests_s3(service):
    tiny_limit = dataclasses.replace(service.service, max_inline_audio_bytes=100)
    limited = SpeechService(service.settings, tiny_limit, service.synthesizer)
    response = limited.handle({"transcript": "Too big.", **BASE})
    assert response["success"] is False and response["error_code"] == "result_too_large"
    assert "s3_bucket" in response["error"] and "'mp3'" in response["error"]


def test_health_and_voice_list(service):
    health = service.handle({"action": "health"})
    assert health["status"] == "healthy"
    assert set(health["model_info"]) == {"model_path", "device", "models_loaded", "voice_prompts_available",
                                           "model_source", "engine"}
    assert health["model_info"]["model_source"] == {
        "model": {"origin": "folder", "path": service.settings.model_path},
        "tokenizer": {"origin": "folder", "path": service.settings.tokenizer_path}}
    clips = {path.stem for path in service.settings.voice_prompts_path.glob("*.wav")}
    assert health["model_info"]["voice_prompts_available"] == len(clips) > 0
    assert health["model_info"]["engine"] is None  # no engine before the first request
    assert health["timestamp"].endswith("+00:00")
    listed = service.handle({"action": "list_voices"})
    kinds = {v["name"]: v["kind"] for v in listed["voices"]}
    assert kinds["belinda"] == "clone" and kinds["elsa"] == "described"


def test_health_reports_a_missing_model(service, tmp_path):
    broken = dataclasses.replace(service.settings, model_path=str(tmp_path / "absent"))
    unhealthy = SpeechService(broken, service.service, Synthesizer(broken, ModelCache()))
    health = unhealthy.handle({"action": "health"})
    assert health["status"].startswith("unhealthy") and health["model_info"]["models_loaded"] is False


def test_health_reports_a_legacy_checkpoint_and_a_missing_gpu(service, tmp_path):
    import json as json_module

    legacy = tmp_path / "legacy"
    shutil.copytree(service.settings.model_path, legacy)
    config = json_module.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json_module.dumps({**config, "model_type": "higgs_audio"}))
    broken = dataclasses.replace(service.settings, model_path=str(legacy))
    health = SpeechService(broken, service.service, Synthesizer(broken, ModelCache())).handle({"action": "health"})
    assert health["status"].startswith("unhealthy: model") and "convert-checkpoint" in health["status"]
    if not torch.cuda.is_available():
        gpu = dataclasses.replace(service.settings, device="cuda")
        health = SpeechService(gpu, service.service, Synthesizer(gpu, ModelCache())).handle({"action": "health"})
        assert health["status"].startswith("unhealthy") and "CUDA is not available" in health["status"]


class OutOfMemoryOnce(Synthesizer):
    """CUDA out-of-memory cannot happen on a CPU machine; this raises the real exception type once."""

    raised = False

    def synthesize(self, request, cancel=None, progress=None, plan=None):
        if not self.raised:
            self.raised = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().synthesize(request, cancel, progress, plan)


def test_out_of_memory_fails_the_job_and_the_worker_goes_on(service):
    flaky = SpeechService(service.settings, service.service,
                          OutOfMemoryOnce(service.settings, service.synthesizer._models))
    first = flaky.handle({"transcript": "Big.", **BASE})
    assert first["success"] is False and first["error_code"] == "out_of_memory"
    assert flaky.handle({"transcript": "Small.", **BASE})["success"] is True


class OutOfMemoryStream(Synthesizer):
    def stream(self, request, decoder_options=None, cancel=None, plan=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, like the real one


def test_out_of_memory_while_streaming_is_the_same_clear_error(service):
    from higgs_tts.service.errors import JobError
    from higgs_tts.service.schema import parse_input

    models = service.synthesizer._models
    streaming = SpeechService(service.settings, service.service, OutOfMemoryStream(service.settings, models))
    items = streaming.open_stream(parse_input({"transcript": "Stream.", **BASE}))
    with pytest.raises(JobError) as err:
        next(items)
    assert err.value.code == "out_of_memory"


def test_audit_line_has_no_transcript(service, caplog):
    secret = "my secret sentence about the merger"
    with caplog.at_level("INFO", logger="higgs_tts.audit"):
        service.handle({"transcript": secret, **BASE}, "job-audit")
    lines = [r.getMessage() for r in caplog.records if r.name == "higgs_tts.audit"]
    record = json.loads(lines[-1])
    assert record["job_id"] == "job-audit" and record["status"] == "ok"
    assert record["transcript_chars"] == len(secret) and len(record["transcript_sha256"]) == 16
    assert all(secret not in r.getMessage() for r in caplog.records)


# -- RunPod streaming jobs ------------------------------------------------------------------------


def test_a_stream_its_reader_leaves_is_audited_cancelled(service, caplog):
    # the transport closes the stream after its first audio (the client went away): the job's line
    # must say so, not stay `running`
    job = {"transcript": "One. Two. Three.", "stream": True, "chunk_method": "sentence", "chunk_max_word_num": 1,
           **BASE}
    with caplog.at_level("INFO", logger="higgs_tts.audit"):
        items = service.stream(job, "job-left")
        assert any(isinstance(event, Audio) for event in items)  # read up to the first audio, then leave
        items.close()
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "higgs_tts.audit"]
    assert (line["job_id"], line["status"], line["error_code"]) == ("job-left", "cancelled", "cancelled")


def test_a_whole_response_worker_refuses_stream_naming_the_field(service):
    response = service.handle({"transcript": "Stream?", "stream": True, **BASE})
    assert response["success"] is False and response["error_field"] == "stream"
    assert "STREAMING=1" in response["error"]


@pytest.mark.parametrize("temperature", [1e-45, 5e-324])
def test_a_vanishing_temperature_decodes_greedily(service, temperature):
    response = service.handle({"transcript": "Cold.", "temperature": temperature, **BASE})
    assert response["success"] is True, response.get("error")
    greedy = service.handle({"transcript": "Cold.", "temperature": 0, **BASE})
    assert response["audio_base64"] == greedy["audio_base64"]


@pytest.mark.parametrize("kind", ["m4a", "webm", "opus"])
def test_phone_and_browser_recordings_clone(service, voice_prompts, kind):
    from conftest import encode_recording

    data = encode_recording(voice_prompts / "en_man.wav", kind, seconds=3.0)
    clip = f"data:audio/{kind};base64," + base64.b64encode(data).decode()  # as a browser's FileReader gives it
    cloned = service.handle({"transcript": "Cloned.", "ref_audio_base64": clip, **BASE})
    assert cloned["success"], cloned
    assert cloned["metadata"]["voice_clone"] == "uploaded"
    added = service.handle({"action": "add_voice", "voice_name": f"phone_{kind}", "ref_audio_base64": clip,
                            "ref_audio_transcript": "Maintaining your ability to learn."})
    assert added["success"], added
    assert added["duration_seconds"] == pytest.approx(3.0, abs=0.1)
    assert service.handle({"transcript": "By name.", "ref_audio": f"phone_{kind}", **BASE})["success"]


def test_get_and_delete_voice_actions(settings, tmp_path, voice_prompts):
    from higgs_tts.settings import ServiceSettings

    voices = tmp_path / "voices"
    shutil.copytree(voice_prompts, voices)
    local = dataclasses.replace(settings, voice_prompts_path=voices, voice_cache_dir=tmp_path / "codes")
    service = SpeechService(local, ServiceSettings(), Synthesizer(local, ModelCache()))
    added = service.handle({"action": "add_voice", "voice_name": "guest", "ref_audio_base64": b64_audio(2.0),
                            "ref_audio_transcript": "A guest speaks.", "description": "A test tone"})
    assert added["voice"] == {"name": "guest", "kind": "clone", "description": "A test tone"}
    got = service.handle({"action": "get_voice", "voice_name": "guest"})
    assert got == {"success": True, "voice": {"name": "guest", "kind": "clone", "description": "A test tone",
                                              "transcript": "A guest speaks.", "duration_seconds": 2.0}}
    assert service.handle({"transcript": "By name.", "ref_audio": "guest", **BASE})["success"]
    assert len(list((tmp_path / "codes").rglob("*.npy"))) == 1  # the guest's codes, cached on disk

    deleted = service.handle({"action": "delete_voice", "voice_name": "guest"})
    assert deleted["success"] and deleted["deleted"] == "guest"
    assert "guest" not in {v["name"] for v in deleted["voice_suggestions"]}
    assert list((tmp_path / "codes").rglob("*.npy")) == []  # nothing derived from the voice stays
    after = service.handle({"transcript": "By name.", "ref_audio": "guest", **BASE})
    assert not after["success"] and after["error_code"] == "unknown_voice"
    for action in ("get_voice", "delete_voice"):
        gone = service.handle({"action": action, "voice_name": "guest"})
        assert gone["error_code"] == "voice_not_found" and gone["error_field"] == "voice_name", gone
    bad = service.handle({"action": "delete_voice", "voice_name": "../belinda"})
    assert bad["error_code"] == "invalid_input" and bad["error_field"] == "voice_name"
    assert service.handle({"action": "get_voice", "voice_name": "daffy"})["voice"]["kind"] == "described"


def test_ref_audio_url_is_refused_unless_allow_listed(service, voice_prompts, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from conftest import encode_recording

    (tmp_path / "clip.m4a").write_bytes(encode_recording(voice_prompts / "en_man.wav", "m4a", seconds=3.0))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    web = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/clip.m4a"
    try:
        job = {"transcript": "From a URL.", "ref_audio_url": url, "ref_audio_transcript": "Maintaining.", **BASE}
        refused = service.handle(job)
        assert refused["error_field"] == "ref_audio_url" and refused["error_code"] == "invalid_input"
        assert refused["error"].startswith("ref_audio_url: must use https")
        assert url not in refused["error"]  # a presigned URL's signature stays out of replies
        service.service = dataclasses.replace(service.service, ref_audio_url_allowlist=("127.0.0.1",))
        cloned = service.handle(job)
        assert cloned["success"], cloned
        assert cloned["metadata"]["voice_clone"] == "uploaded"
        both = service.handle({**job, "ref_audio_base64": b64_audio(1.0)})
        assert both["error_field"] == "ref_audio_url" and "not both" in both["error"]
        assert service.handle({**job, "ref_audio_url": "ftp://x/y"})["error"].startswith(
            "ref_audio_url: must be an https:// URL")

        # add_voice by URL, under the same rules
        add = {"action": "add_voice", "voice_name": "from_url", "ref_audio_url": url,
               "ref_audio_transcript": "Maintaining."}
        added = service.handle(add)
        assert added["success"], added
        assert added["voice"]["kind"] == "clone" and added["duration_seconds"] == pytest.approx(3.0, abs=0.1)
        assert service.handle({"transcript": "By name.", "ref_audio": "from_url", **BASE})["success"]
        both = service.handle({**add, "voice_name": "both", "ref_audio_base64": b64_audio(1.0)})
        assert both["error_field"] == "ref_audio_url" and "not both" in both["error"]
        neither = service.handle({k: v for k, v in add.items() if k != "ref_audio_url"} | {"voice_name": "none"})
        assert neither["error_field"] == "ref_audio_base64" and "ref_audio_url" in neither["error"], neither
        service.service = dataclasses.replace(service.service, ref_audio_url_allowlist=())
        refused = service.handle({**add, "voice_name": "refused"})
        assert refused["error_field"] == "ref_audio_url"
        assert refused["error"].startswith("ref_audio_url: must use https")
        names = {v["name"] for v in service.handle({"action": "list_voices"})["voices"]}
        assert "from_url" in names and not {"both", "none", "refused"} & names
    finally:
        web.shutdown()


def test_a_long_text_without_a_chunk_method_is_chunked_for_every_api(service):
    """The rule is the service's, so RunPod jobs, /v1/audio/speech and Wyoming all apply it: a text longer
    than one chunk can speak within max_new_tokens is chunked instead of cut short."""
    from higgs_tts.core.text import word_count, words_per_chunk
    from higgs_tts.service.schema import MIN_AUTO_CHUNK_WORDS, parse_input

    text = " ".join(f"Sentence number {i} is here." for i in range(40))  # 40 sentences of 5 words
    limit = words_per_chunk(200)
    assert word_count(text) > limit

    def planned(**fields):
        job = service.plan(parse_input({"transcript": text, "max_new_tokens": 200, **fields}))
        return job.synthesis.chunk_method, len(job.plan.chunks)

    assert planned() == ("sentence", 40 // (limit // 5))  # whole sentences, `limit` words a chunk
    assert planned(chunk_max_word_num=5) == ("sentence", 40)  # a given size is kept
    assert planned(chunk_method=None) == (None, 1)  # an explicit null keeps one chunk
    assert planned(chunk_method="word", chunk_max_word_num=50) == ("word", 4)
    assert word_count(text) <= words_per_chunk(8192) and planned(max_new_tokens=8192) == (None, 1)  # it fits
    dialogue = "\n".join(f"[SPEAKER{i % 2}] Turn number {i} is spoken here." for i in range(30))
    job = service.plan(parse_input({"transcript": dialogue, "max_new_tokens": 200}))
    assert job.synthesis.chunk_method == "speaker" and len(job.plan.chunks) == 30
    short = service.plan(parse_input({"transcript": "Only a few words.", "max_new_tokens": 200}))
    assert short.synthesis.chunk_method is None and len(short.plan.chunks) == 1

    # a small max_new_tokens is a cap on a short clip (a preview), not a chunk size
    assert words_per_chunk(199) < MIN_AUTO_CHUNK_WORDS <= words_per_chunk(200)
    assert planned(max_new_tokens=199) == (None, 1)

    # end to end through a job: two sentences of 7 and 8 words, max_new_tokens 200 speaks 10 words a chunk
    done = service.handle({"transcript": "One two three four five six seven. Eight nine ten eleven twelve thirteen "
                                         "fourteen fifteen.", "max_new_tokens": 200, "seed": 3})
    assert done["success"], done
    assert done["generation_metrics"]["chunks_processed"] == 2
