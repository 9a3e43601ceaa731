"""The voice library: clone voices (audio + transcript) and described voices (text only).

Layout of the voices folder (`VOICE_PROMPTS_PATH`):
- `NAME.wav` (or .flac/.mp3/.ogg/.opus/.m4a/.webm) with `NAME.txt`, the clip's transcript: a clone voice,
  and optionally `NAME.description`, one line that describes it;
- `profile.yaml` with `profiles: {NAME: description}`: described voices.
The documented catalog names always exist: with audio they clone it, without they are described.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .audio import read_audio, wav_bytes

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm")
DESCRIPTION_SUFFIX = ".description"
LOCK_FILE = ".voices.lock"  # flock()ed by every writer, so workers sharing a volume take turns
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
PROFILE_PREFIX = "profile:"  # the reference CLI's spelling for a described voice

# The product documentation's voices and their descriptions.
CATALOG = {
    "belinda": "Female voice with warm tone",
    "chadwick": "Male voice with deep tone",
    "daffy": "Animated character voice",
    "elsa": "Female voice with clear articulation",
    "jorts": "Male voice with casual tone",
}


class VoiceExists(ValueError):
    """A voice of that name exists and the caller did not ask to replace it."""


class VoiceError(ValueError):
    """A voice name that is invalid or unknown; carries suggestions for the caller."""

    def __init__(self, message: str, suggestions: list[dict] | None = None) -> None:
        super().__init__(message)
        self.suggestions = suggestions or []


@dataclass(frozen=True)
class Voice:
    name: str
    description: str
    audio_path: Path | None = None
    transcript: str | None = None

    @property
    def kind(self) -> str:
        return "clone" if self.audio_path is not None else "described"

    def load_audio(self) -> np.ndarray:
        if self.audio_path is None:
            raise VoiceError(f"voice {self.name!r} has no audio")
        return read_audio(self.audio_path)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):  # match + \Z: no trailing newline
        raise VoiceError(
            f"invalid voice name {name!r}: use 1 to 64 letters, digits, '_' or '-'"
        )
    return name


class VoiceLibrary:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._writing = threading.Lock()  # one add() at a time per library

    @contextlib.contextmanager
    def _locked(self):
        """One writer at a time: threads of this process, and processes sharing the folder."""
        with self._writing:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / LOCK_FILE, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _stored(self, name: str) -> list[Path]:
        """The files of a stored voice: audio first (its removal alone makes the voice disappear)."""
        suffixes = (*AUDIO_SUFFIXES, ".txt", DESCRIPTION_SUFFIX)
        return [self.root / f"{name}{s}" for s in suffixes if (self.root / f"{name}{s}").is_file()]

    def add(self, name: str, audio: np.ndarray, transcript: str, overwrite: bool = False,
            description: str | None = None) -> Voice:
        """Store a clone voice as NAME.wav + NAME.txt (24 kHz mono audio, its transcript), with
        NAME.description when a description is given.

        Every file is written under a temporary name first and renamed into place only when all
        are complete, so a full disk or a crash never leaves half a voice or loses the old one.
        Raises VoiceExists when the name has audio and `overwrite` is not set, OSError (with its
        errno: ENOSPC for a full disk) when the folder cannot be written. Calls are serialized:
        of N concurrent creations one wins.
        """
        validate_name(name)
        with self._locked():
            existing = [self.root / f"{name}{s}" for s in AUDIO_SUFFIXES if (self.root / f"{name}{s}").exists()]
            if existing and not overwrite:
                raise VoiceExists(f"voice {name!r} already exists; set overwrite to true to replace it")
            files = [(".txt", lambda p: p.write_text(transcript.strip() + "\n", encoding="utf-8"))]
            if description and description.strip():
                text = " ".join(description.split()) + "\n"
                files.append((DESCRIPTION_SUFFIX, lambda p: p.write_text(text, encoding="utf-8")))
            clip = wav_bytes(audio)
            files.append((".wav", lambda p: p.write_bytes(clip)))
            staged: list[tuple[str, str]] = []
            try:
                for suffix, write in files:
                    staged.append((_staged(self.root, suffix, write), suffix))
            except BaseException:
                for tmp, _ in staged:
                    os.unlink(tmp)
                raise
            for tmp, suffix in staged:
                os.replace(tmp, self.root / f"{name}{suffix}")
            for old in existing:  # audio of another format would shadow or duplicate the new clip
                if old.suffix != ".wav":
                    old.unlink(missing_ok=True)
            if not any(suffix == DESCRIPTION_SUFFIX for _, suffix in staged):  # the old one described old audio
                (self.root / f"{name}{DESCRIPTION_SUFFIX}").unlink(missing_ok=True)
        return self.get(name)

    def delete(self, name: str) -> tuple[Voice, np.ndarray | None]:
        """Remove a stored clone voice (all its files); returns it and its audio as it was (None
        when unreadable), so that codes cached from that audio can be dropped too.

        The audio goes first: from then on the voice is gone for readers, whatever follows.
        Raises VoiceError when no stored voice has the name (described voices live in profile.yaml).
        """
        validate_name(name)
        with self._locked():
            voice = self._clone_voice(name, self._profiles())
            if voice is None:
                raise VoiceError(f"no stored voice named {name!r}" + (
                    "; it is a described voice (profile.yaml or the catalog), not an uploaded one"
                    if name in CATALOG or name in self._profiles() else ""), suggestions=self.suggestions())
            try:
                audio = voice.load_audio()
            except ValueError:
                audio = None
            for path in self._stored(name):
                path.unlink(missing_ok=True)
        return voice, audio

    def _inside(self, path: Path) -> bool:
        """True when the path, with every symlink followed, stays inside the voices folder."""
        try:
            return path.resolve(strict=True).is_relative_to(self.root.resolve(strict=True))
        except (OSError, RuntimeError):
            return False

    def _profiles(self) -> dict[str, str]:
        path = self.root / "profile.yaml"
        if not path.is_file() or not self._inside(path):
            return {}
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        profiles = data.get("profiles", {}) if isinstance(data, dict) else {}
        return {
            str(name): " ".join(str(text).split())
            for name, text in (profiles or {}).items()
            if NAME_PATTERN.match(str(name)) and str(text).strip()
        }

    def _audio_file(self, name: str) -> Path | None:
        for suffix in AUDIO_SUFFIXES:
            path = self.root / f"{name}{suffix}"
            if path.is_file() and (self.root / f"{name}.txt").is_file():
                return path
        return None

    def _clone_voice(self, name: str, profiles: dict[str, str]) -> Voice | None:
        audio = self._audio_file(name)
        if audio is None:
            return None
        transcript_file = self.root / f"{name}.txt"
        if not (self._inside(audio) and self._inside(transcript_file)):
            return None
        transcript = transcript_file.read_text(encoding="utf-8").strip()
        description_file = self.root / f"{name}{DESCRIPTION_SUFFIX}"
        own = (description_file.read_text(encoding="utf-8").strip()
               if description_file.is_file() and self._inside(description_file) else "")
        description = own or CATALOG.get(name) or profiles.get(name) or f"Voice cloned from {audio.name}"
        return Voice(name=name, description=description, audio_path=audio, transcript=transcript)

    def get(self, name: str) -> Voice:
        """One voice by name (or `profile:NAME` for a described voice from profile.yaml)."""
        described_only = isinstance(name, str) and name.startswith(PROFILE_PREFIX)
        if described_only:
            name = name[len(PROFILE_PREFIX):]
        validate_name(name)
        profiles = self._profiles()
        if not described_only and (voice := self._clone_voice(name, profiles)):
            return voice
        if name in profiles:
            return Voice(name=name, description=profiles[name])
        if name in CATALOG:
            return Voice(name=name, description=CATALOG[name])
        raise VoiceError(
            f"unknown voice {name!r}; available: {', '.join(v.name for v in self.list())}",
            suggestions=self.suggestions(),
        )

    def resolve(self, names: str | list[str] | None) -> list[Voice]:
        """`"belinda,chadwick"` (or a list) to voices in speaker order; empty for none."""
        if names is None:
            return []
        parts = names.split(",") if isinstance(names, str) else list(names)
        parts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
        return [self.get(p) for p in parts]

    def list(self) -> list[Voice]:
        profiles = self._profiles()
        voices: dict[str, Voice] = {}
        if self.root.is_dir():
            for path in sorted(self.root.iterdir()):
                if path.suffix.lower() in AUDIO_SUFFIXES and NAME_PATTERN.match(path.stem):
                    voice = self._clone_voice(path.stem, profiles)
                    if voice:
                        voices.setdefault(voice.name, voice)
        for name, description in {**CATALOG, **profiles}.items():
            voices.setdefault(name, Voice(name=name, description=description))
        return sorted(voices.values(), key=lambda v: v.name)

    def suggestions(self) -> list[dict]:
        return [{"name": v.name, "description": v.description} for v in self.list()]


def _staged(folder: Path, suffix: str, write) -> str:
    """A complete file written by `write` under a hidden temporary name in `folder` (0644)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the voice from other users of the volume
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
