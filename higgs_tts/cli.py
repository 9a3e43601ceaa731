"""The `higgs-tts` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .core.memory import fix_mmap_threshold
from .core.sampling import MAX_SEED, chunk_knobs, sampling_knobs
from .core.text import CHUNK_METHODS
from .settings import ENGINE_ALIASES, ENGINES, Settings


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="model folder or Hugging Face repo id (default: $MODEL_PATH)")
    parser.add_argument("--tokenizer-path", help="codec folder or repo id (default: $TOKENIZER_PATH)")
    parser.add_argument("--voices-dir", help="voices folder (default: $VOICE_PROMPTS_PATH)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: automatic)")
    parser.add_argument("--engine", choices=(*ENGINES, *ENGINE_ALIASES),
                        help="decode loop: fast (ours), generate (transformers' generate(); also 'reference'); "
                             "default $ENGINE or auto = fast")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    overrides = {
        "model_path": getattr(args, "model_path", None),
        "tokenizer_path": getattr(args, "tokenizer_path", None),
        "voice_prompts_path": Path(args.voices_dir) if getattr(args, "voices_dir", None) else None,
        "device": getattr(args, "device", None),
        "engine": getattr(args, "engine", None),
        "dtype": getattr(args, "dtype", None),
    }
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _speak(args: argparse.Namespace) -> int:
    from .core.audio import write_audio
    from .core.sampling import ChunkParams, SamplingParams
    from .synthesis.synthesizer import SynthesisRequest, Synthesizer

    text = args.text if args.text is not None else Path(args.text_file).read_text(encoding="utf-8")
    request = SynthesisRequest(text=text, voices=args.voice, scene=args.scene, chunk_method=args.chunk_method,
                               ref_audio_in_system_message=args.voice_in_system,
                               sampling=SamplingParams.from_fields(args), seed=args.seed,
                               **ChunkParams.values_from(args))
    synthesizer = Synthesizer(_settings(args))
    if args.print_prompt:
        sys.stdout.write(synthesizer.render_prompt(request) + "\n")
        return 0
    if not args.out:
        raise ValueError("--out is required unless --print-prompt is given")
    result = synthesizer.synthesize(request)
    write_audio(args.out, result.audio, result.sample_rate)
    logging.getLogger("higgs_tts").info(
        "wrote %s: %.2f s of audio, %d chunk(s), seed %d, generation %.2f s, decode %.2f s",
        args.out, result.duration_seconds, len(result.chunks), result.seed,
        result.generation_seconds, result.decode_seconds,
    )
    return 0


def _voices(args: argparse.Namespace) -> int:
    from .core.voices import VoiceLibrary

    for voice in VoiceLibrary(_settings(args).voice_prompts_path).list():
        print(f"{voice.name}\t{voice.kind}\t{voice.description}")
    return 0


def _tiny_checkpoint(args: argparse.Namespace) -> int:
    from .tools.tiny_checkpoint import write_tiny_checkpoint

    model_dir, codec_dir = write_tiny_checkpoint(args.dir, seed=args.seed)
    print(f"MODEL_PATH={model_dir}")
    print(f"TOKENIZER_PATH={codec_dir}")
    return 0


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from .tools.convert import convert_checkpoint

    if (args.tokenizer_src is None) != (args.tokenizer_dst is None):
        raise ValueError("--tokenizer-src and --tokenizer-dst go together")
    convert_checkpoint(args.src, args.dst, args.tokenizer_src, args.tokenizer_dst)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .tools import bench

    settings = _settings(args)
    if args.random_weights:
        from .tools.tiny_checkpoint import full_size_random_model

        loaded = full_size_random_model(settings.device, settings.dtype)
    else:
        from .core.checkpoint import load_model

        loaded = load_model(settings)
    if args.anatomy:
        figures = bench.anatomy(loaded, layers=args.layers)
        print(json.dumps(figures, indent=2) if args.json else bench.anatomy_table(figures))
        return 0
    on_gpu = loaded.device.type == "cuda"
    steps = args.steps or (512 if on_gpu else 48)
    reference_steps = args.reference_steps or (64 if on_gpu else 24)
    default_batches = [1, 8, 32, 64] if on_gpu else [1, 4]
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else default_batches
    concurrency = [int(n) for n in args.concurrency.split(",")] if args.concurrency else None
    result = bench.run(loaded, batches, steps, reference_steps, concurrency=concurrency)
    print(result.to_json() if args.json else result.table())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .delivery.app import serve

    serve(args.host, args.port)
    return 0


def _wyoming(args: argparse.Namespace) -> int:
    from .delivery.wyoming import serve

    serve(args.uri)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="higgs-tts", description="Higgs Audio V2 text-to-speech")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    speak = commands.add_parser("speak", help="synthesize speech to an audio file")
    source = speak.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text to speak")
    source.add_argument("--text-file", help="file with the text to speak")
    speak.add_argument("--voice", help="voice name(s), comma-separated for several speakers")
    speak.add_argument("--scene", help="scene description (default: a quiet room; '' for none)")
    speak.add_argument("--voice-in-system", action="store_true",
                       help="put reference voices in the system block instead of as examples")
    speak.add_argument("--chunk-method", choices=CHUNK_METHODS, default=None)
    chunking = {k.name: k for k in chunk_knobs()}  # flags named as before: --chunk-buffer-size
    for flag, knob in (("--chunk-max-word-num", chunking["chunk_max_word_num"]),
                       ("--chunk-max-num-turns", chunking["chunk_max_num_turns"]),
                       ("--chunk-buffer-size", chunking["generation_chunk_buffer_size"])):
        speak.add_argument(flag, dest=knob.name, type=knob.type, default=knob.default,
                           help=f"{knob.help} ({knob.rule()}; default {knob.default})")
    speak.add_argument("--seed", type=int, default=None, help=f"0 to {MAX_SEED} (default: random, logged)")
    for knob in sampling_knobs():  # one flag per sampling knob, with its default and meaning
        speak.add_argument("--" + knob.name.replace("_", "-"), type=knob.type, default=knob.default,
                           help=f"{knob.help} ({knob.rule()}; default {knob.default})")
    speak.add_argument("--print-prompt", action="store_true", help="print the rendered prompt and exit")
    speak.add_argument("--out", help="output audio file (.wav, .flac, .ogg)")
    _add_model_options(speak)
    speak.set_defaults(run=_speak)

    voices = commands.add_parser("voices", help="list voices (name, kind, description)")
    voices.add_argument("--voices-dir", help="voices folder (default: $VOICE_PROMPTS_PATH)")
    voices.set_defaults(run=_voices)

    bench = commands.add_parser("bench", help="measure the engine on this machine (frames/s, roofline, ...)")
    bench.add_argument("--random-weights", action="store_true",
                       help="full-size model with random weights (no download needed)")
    bench.add_argument("--batch-sizes", help="comma-separated (default: 1,8,32,64 on CUDA, 1,4 on CPU)")
    bench.add_argument("--steps", type=int, help="decode steps per measurement (default: 512 CUDA, 48 CPU)")
    bench.add_argument("--reference-steps", type=int, help="steps for transformers' generate() (default 64/24)")
    bench.add_argument("--concurrency", help="comma-separated request counts for the continuous-batching "
                                             "scheduler, e.g. 1,8,32,64 (default: not measured)")
    bench.add_argument("--json", action="store_true", help="JSON instead of a table")
    bench.add_argument("--anatomy", action="store_true",
                       help="count kernels per layer and step, host syncs per burst and prefill, host time per "
                            "step (exact on any device, CPU included; docs/engine.md)")
    bench.add_argument("--layers", type=int,
                       help="with --anatomy: repeat the checkpoint's layers to this depth (28 = the real model)")
    _add_model_options(bench)
    bench.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bf16 on CUDA)")
    bench.set_defaults(run=_bench)

    server = commands.add_parser("serve", help="HTTP API: OpenAI-style speech, RunPod jobs, health, metrics")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.set_defaults(run=_serve)

    wyoming = commands.add_parser("wyoming", help="Wyoming text-to-speech server (Home Assistant)")
    wyoming.add_argument("--uri", help="tcp://HOST:PORT or unix://PATH to listen on "
                                       "(default: $WYOMING_URI or tcp://0.0.0.0:10200)")
    wyoming.set_defaults(run=_wyoming)

    tiny = commands.add_parser("tiny-checkpoint", help="write a tiny random checkpoint for tests")
    tiny.add_argument("dir", help="output folder (gets model/ and audio_tokenizer/)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_tiny_checkpoint)

    convert = commands.add_parser("convert-checkpoint",
                                  help="convert the legacy release (model_type higgs_audio) to the native layout")
    convert.add_argument("src", help="legacy model folder (config.json model_type 'higgs_audio')")
    convert.add_argument("dst", help="new folder for the native model (must not exist)")
    convert.add_argument("--tokenizer-src", help="legacy audio tokenizer folder (config.json + model.pth)")
    convert.add_argument("--tokenizer-dst", help="new folder for the native audio tokenizer (must not exist)")
    convert.set_defaults(run=_convert_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        fix_mmap_threshold(Settings.from_env().malloc_mmap_threshold)  # before any large allocation
        return args.run(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"higgs-tts: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
