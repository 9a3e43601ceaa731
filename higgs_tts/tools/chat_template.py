"""The native chat template (`chat_template.jinja` beside this file), for the checkpoints we write.

It renders as docs/model-facts.md section 4 describes: a required system turn, an optional `scene`
turn folded into it, audio-only assistant turns, and a generation prompt that opens an audio-out
stream. The converter writes it into converted checkpoints; the tiny test checkpoint uses it too.
"""

from pathlib import Path

CHAT_TEMPLATE = (Path(__file__).with_name("chat_template.jinja")).read_text(encoding="utf-8")
