"""Send an audio file to `xlsr-edge serve` over its WebSocket protocol and print the finals as they come.

    xlsr-edge serve tr-bundle --host 127.0.0.1 --port 8765 &
    python examples/stream_client.py [AUDIO] [--url ws://127.0.0.1:8765]

AUDIO: any file soundfile reads; default, a Turkish clip shipped with xlsr-edge. The protocol carries s16le
*mono* PCM: a stereo (or wider) file is mixed down to mono first, since its interleaved samples would otherwise
be heard as one channel at twice the length (noise, no error). Needs `pip install 'xlsr-edge[stream]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect

from xlsr_edge.data import CLIPS_DIR

DEFAULT_AUDIO = CLIPS_DIR / "tr_3.flac"


def mono_pcm16(path: str | Path) -> tuple[bytes, int]:
    """The file as s16le mono PCM bytes and its sample rate: channels averaged, then scaled to int16."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    mono = audio.mean(axis=1)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes(), rate


async def transcribe(path: str | Path, url: str = "ws://127.0.0.1:8765") -> list[dict]:
    pcm, rate = mono_pcm16(path)
    packet = 2 * (rate // 10)  # 100 ms of 16-bit samples
    finals = []
    async with connect(url) as ws:
        await ws.send(
            json.dumps({"config": {"sample_rate": rate}})
        )  # the server resamples to the model's rate
        for i in range(0, len(pcm), packet):
            await ws.send(pcm[i : i + packet])
        await ws.send(json.dumps({"eof": True}))
        async for message in ws:  # ends when the server closes, after the last final
            event = json.loads(message)
            if event["type"] == "error":
                raise SystemExit(f"error: {event['error']}")
            if event["type"] == "final":
                finals.append(event)
                print(f"[{event['start']:.2f}-{event['end']:.2f}] {event['text']}", flush=True)
    return finals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("audio", nargs="?", default=str(DEFAULT_AUDIO), help="default: a shipped Turkish clip")
    ap.add_argument("--url", default="ws://127.0.0.1:8765")
    args = ap.parse_args()
    asyncio.run(transcribe(args.audio, args.url))


if __name__ == "__main__":
    main()
