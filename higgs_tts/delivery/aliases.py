"""OpenAI's voice names as aliases of library voices, from a YAML mapping file.

    aliases: {alloy: en_woman, onyx: chadwick, ...}

The packaged default is `openai_voices.yaml` beside this module; `VOICE_ALIASES_PATH` replaces it.
A library voice of the alias's name wins, so a voice someone adds as `nova` is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.voices import NAME_PATTERN

DEFAULT_PATH = Path(__file__).with_name("openai_voices.yaml")


@dataclass(frozen=True)
class VoiceAliases:
    mapping: dict[str, str]  # alias -> library voice name(s), "a" or "a,b"
    source: Path

    @classmethod
    def load(cls, path: Path | None = None) -> VoiceAliases:
        """The mapping in `path` (the packaged default when None); ValueError naming the file and
        the entry for a file that is not `aliases: {NAME: VOICE}`."""
        source = Path(path) if path is not None else DEFAULT_PATH
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"VOICE_ALIASES_PATH {source}: cannot read it ({exc})") from None
        aliases = data.get("aliases") if isinstance(data, dict) else None
        if not isinstance(aliases, dict):
            raise ValueError(f"VOICE_ALIASES_PATH {source}: expected 'aliases: {{NAME: VOICE}}'")
        mapping: dict[str, str] = {}
        for alias, target in aliases.items():
            names = [n.strip() for n in str(target).split(",")] if target is not None else []
            if not NAME_PATTERN.match(str(alias)) or not names or not all(NAME_PATTERN.match(n) for n in names):
                raise ValueError(f"VOICE_ALIASES_PATH {source}: entry {alias!r}: {target!r} is not a voice name "
                                 "(1 to 64 letters, digits, '_' or '-')")
            mapping[str(alias)] = ",".join(names)
        return cls(mapping, source)

    def resolve(self, voice: str, library: set[str]) -> str:
        """`voice` ("alloy" or "alloy,belinda") with every alias that is not a library voice
        replaced by its target; other names are left for the library to judge."""
        names = [n.strip() for n in voice.split(",")]
        return ",".join(n if n in library or n not in self.mapping else self.mapping[n] for n in names)
