"""Audio front end: read, down-mix, resample, normalize exactly as transformers' feature extractor does.

A file's header is checked before anything is read (kind of file, sample rate, duration against
``max_seconds``, and for WAV the data size against the file's size: libsndfile quietly reads a truncated WAV
as a shorter one) and never trusted for an allocation: files are read in blocks and the header's length is
checked against what the stream holds. Samples must be finite and within MAX_ABS_SAMPLE (check_samples).
Short files (up to WHOLE_READ_MAX_SAMPLES decoded samples) are then resampled in one go; longer ones are
streamed twice (length and normalization statistics, then window by window, see StreamedAudio), so memory
does not grow with the file. soxr's stream resampler gives the same samples as its one-shot resample, so both
paths see the same audio.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.constants import DEFAULT_MAX_SECONDS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, NORMALIZE_EPS
from xlsr_edge.errors import AudioError

READ_BLOCK_FRAMES = 1 << 16
# Largest |sample| accepted. Float audio may pass full scale (1.0): headroom, or int16 values saved as float
# (up to 32768); 1e30 is garbage, and its square overflows float32 in the normalization (an empty transcript).
MAX_ABS_SAMPLE = 1e6
# WAV data sizes that mean "unknown" (written to a pipe before the length was known): nothing to compare.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000)
_WAV_MAX_CHUNKS = 64  # chunks looked at before `data` (fmt, LIST, fact, bext, ... are a handful)
# decoded samples (frames x channels) read at once: 64 MiB of float32, ~17 min of 16 kHz mono; longer files stream
WHOLE_READ_MAX_SAMPLES = 1 << 24

_NOT_FILES = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_rate(name: str, rate: int) -> None:
    """Refuse sample rates no speech recording has (a 1 Hz header would resample for hours)."""
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz; speech recognition needs at least "
            "8 kHz audio (or the file's header is wrong)"
        )
    if rate > MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {rate} Hz is above {MAX_SAMPLE_RATE} Hz; the file's header is wrong"
        )


def check_duration(name: str, seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"{name}: {seconds:.0f} s ({seconds / 3600:.1f} h) of audio, more than --max-seconds {max_seconds:g}; "
            "split the file or raise the limit"
        )


def check_regular_file(path: str | Path) -> Path:
    """The path as a Path if it is a non-empty regular file; pipes and devices are refused without opening
    them (opening a FIFO blocks until a writer comes, /dev/zero never ends)."""
    p = Path(path)
    try:
        mode = p.stat()
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for test, kind in _NOT_FILES:
        if test(mode.st_mode):
            raise AudioError(f"{path}: {kind}, not an audio file; save the audio to a file first")
    if mode.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return p


def check_samples(name: str, x: np.ndarray, at: float | None = None, what: str = "the file") -> None:
    """Refuse NaN/inf samples and absurd magnitudes (AudioError) before any arithmetic warns about them.
    `at`: where in the input the samples start (seconds), for the message."""
    if not x.size:
        return
    peak = float(np.max(np.abs(x)))  # NaN propagates (no warning), inf stays inf
    where = f" at {at:.1f} s" if at is not None else ""
    if not np.isfinite(peak):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise AudioError(f"{name}: {bad} NaN/inf samples{where}; {what} is corrupt")
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"{name}: sample values up to {peak:.3g}{where}, far outside audio's range (about ±1); {what} is "
            "corrupt or wrongly scaled"
        )


def wav_data_claim(path: Path) -> tuple[int, int, int] | None:
    """For a RIFF/WAVE file: (bytes its data chunk claims, bytes the file holds after that chunk's header,
    bytes per frame); None for other files and for WAVs whose size field means "unknown"."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size, pos, align = os.fstat(f.fileno()).st_size, 12, 0
        for _ in range(_WAV_MAX_CHUNKS):
            f.seek(pos)
            header = f.read(8)
            if len(header) < 8:
                return None
            chunk, n = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk == b"fmt ":
                fmt = f.read(min(n, 16))
                align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
            elif chunk == b"data":
                return None if n in _WAV_UNKNOWN_SIZES else (n, size - pos - 8, align)
            pos += 8 + n + (n & 1)  # chunks are padded to even sizes
    return None


def _check_wav_size(path: Path, name: str, rate: int, frames: int) -> None:
    """A WAV whose header claims more data than the file holds is truncated: libsndfile would read it as a
    shorter file without a word (the FLAC decoder fails instead)."""
    try:
        claim = wav_data_claim(path)
    except OSError as exc:
        raise AudioError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if claim is None:
        return
    claimed, present, align = claim
    slack = max(rate // 10, frames // 1000) * max(align, 1)  # as _blocks allows: a few frames either way
    if claimed > present + slack:
        per_second = rate * align if align else present / max(frames / rate, 1e-9)
        raise AudioError(
            f"{name}: the header says {claimed / per_second:.1f} s but the file holds "
            f"{present / per_second:.1f} s; the file is truncated or its header is wrong"
        )


def _reason(exc: BaseException) -> str:
    # LibsndfileError.error_string is libsndfile's message without soundfile's "Error opening b'...'" prefix
    return (getattr(exc, "error_string", None) or str(exc)).strip() or type(exc).__name__


@dataclass(frozen=True)
class AudioFile:
    """An audio file whose header passed the checks; read whole (`read`) or block by block (`stream`)."""

    path: Path
    name: str
    source_rate: int
    channels: int
    frames: int  # the header's length, checked against the stream while reading
    sample_rate: int  # the rate `read` and `stream` deliver

    @classmethod
    def open(
        cls, path: str | Path, sample_rate: int, *, max_seconds: float | None = DEFAULT_MAX_SECONDS
    ) -> AudioFile:
        import soundfile as sf

        p = check_regular_file(path)
        name = str(path)
        try:  # bytes: soundfile encodes str names strictly, which fails on non-UTF-8 file names
            info = sf.info(os.fsencode(p))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise AudioError(f"{name}: not readable audio ({_reason(exc)})") from exc
        check_rate(name, info.samplerate)
        if info.channels < 1:
            raise AudioError(f"{name}: the header says {info.channels} channels; the file is corrupt")
        if info.frames <= 0:
            raise AudioError(f"{name}: no samples")
        _check_wav_size(p, name, info.samplerate, info.frames)
        audio = cls(p, name, info.samplerate, info.channels, info.frames, sample_rate)
        check_duration(name, audio.duration, max_seconds)
        return audio

    @property
    def duration(self) -> float:
        return self.frames / self.source_rate

    @property
    def fits_in_memory(self) -> bool:
        return self.frames * self.channels <= WHOLE_READ_MAX_SAMPLES

    def read(self) -> np.ndarray:
        """The whole file, float32 mono at `sample_rate`."""
        if self.fits_in_memory:
            data = np.concatenate(list(self._blocks()))
            return prepare_audio(data, self.source_rate, self.sample_rate, name=self.name)
        return np.concatenate(list(self.stream()))

    def stream(self) -> Iterator[np.ndarray]:
        """Float32 mono at `sample_rate`, block by block."""
        import soxr

        resampler = None
        if self.source_rate != self.sample_rate:
            resampler = soxr.ResampleStream(
                self.source_rate, self.sample_rate, 1, dtype="float32", quality="HQ"
            )
        at = 0
        for block in self._blocks():
            check_samples(self.name, block, at / self.source_rate)  # before the down-mix adds them up
            x = block.mean(axis=1) if block.shape[1] > 1 else np.ascontiguousarray(block[:, 0])
            at += len(x)
            if resampler is not None:
                x = resampler.resample_chunk(x, last=False)
            if len(x):
                yield x
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                yield tail

    def _blocks(self) -> Iterator[np.ndarray]:
        """[frames, channels] float32 blocks. A stream that ends well before the header's length, or runs past
        it (non-seekable formats, which soundfile does not stop at the header's length), is an error."""
        import soundfile as sf

        slack = max(self.source_rate // 10, self.frames // 1000)  # decoders differ by a few codec frames
        done = 0
        try:
            with sf.SoundFile(os.fsencode(self.path)) as f:
                while True:
                    block = f.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
                    if not len(block):
                        break
                    done += len(block)
                    if done > self.frames + slack:
                        raise AudioError(
                            f"{self.name}: the audio runs past the {self.duration:.1f} s its header says; "
                            "the header is wrong"
                        )
                    yield block
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise AudioError(
                f"{self.name}: decoding failed after {done / self.source_rate:.1f} s of {self.duration:.1f} s "
                f"({_reason(exc)}); the file is truncated or corrupt"
            ) from exc
        if done < self.frames - slack:
            raise AudioError(
                f"{self.name}: the header says {self.duration:.1f} s but the audio ends after "
                f"{done / self.source_rate:.1f} s; the file is truncated or its header is wrong"
            )


class StreamedAudio:
    """A long file read twice in blocks, never whole: `scan` counts the samples and gathers the normalization
    statistics, then `window` streams it again for windows whose start and end never go back.

    Normalization uses the whole file's mean and variance (accumulated in float64), as `normalize` does.
    """

    def __init__(self, audio: AudioFile, do_normalize: bool) -> None:
        self.audio = audio
        self.do_normalize = do_normalize
        self.num_samples = 0
        self.mean = self.var = np.float32(0.0)
        self._blocks: Iterator[np.ndarray] | None = None

    def scan(self) -> int:
        """The first pass: number of samples at the target rate, mean and variance. Raises AudioError."""
        n, mean, m2 = 0, 0.0, 0.0
        for x in self.audio.stream():  # Chan et al.: merge each block's mean and squared deviations
            xd = x.astype(np.float64)
            k, block_mean = len(xd), float(xd.mean())
            delta, total = block_mean - mean, n + k
            mean += delta * k / total
            m2 += float(((xd - block_mean) ** 2).sum()) + delta * delta * n * k / total
            n = total
        if n == 0:
            raise AudioError(f"{self.audio.name}: no samples")
        self.num_samples = n
        self.mean = np.float32(mean)
        self.var = np.float32(m2 / n)
        return n

    def _restart(self) -> None:
        self.close()
        self._blocks = self.audio.stream()
        self._buffer: list[np.ndarray] = []
        self._start = 0  # sample offset of self._buffer[0]
        self._end = 0

    def window(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end), normalized like the whole file would be."""
        if self._blocks is None or start < self._start:  # first window, or one from behind: from the top
            self._restart()
        while self._end < end:
            x = next(self._blocks, None)
            if x is None:
                raise AudioError(
                    f"{self.audio.name}: the file changed while it was read (ends at "
                    f"{self._end / self.audio.sample_rate:.1f} s, was {self.num_samples / self.audio.sample_rate:.1f} s)"
                )
            self._buffer.append(x)
            self._end += len(x)
        while self._buffer and self._start + len(self._buffer[0]) <= start:
            self._start += len(self._buffer.pop(0))
        joined = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        out = joined[start - self._start : end - self._start]
        return normalize_with(out, self.mean, self.var) if self.do_normalize else out.copy()

    def close(self) -> None:
        if self._blocks is not None:
            self._blocks.close()
            self._blocks = None


def load_audio(
    path: str | Path, sample_rate: int, max_seconds: float | None = DEFAULT_MAX_SECONDS
) -> np.ndarray:
    """Read a file soundfile understands, return float32 mono at `sample_rate`. Raises AudioError."""
    return AudioFile.open(path, sample_rate, max_seconds=max_seconds).read()


def prepare_audio(data: np.ndarray, source_rate: int, sample_rate: int, name: str = "array") -> np.ndarray:
    """Down-mix [samples, channels] (or 1-D) to mono, check it, resample with soxr to `sample_rate`."""
    x = np.asarray(data)
    if x.ndim not in (1, 2):
        raise AudioError(f"{name}: expected 1-D samples or [samples, channels], got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):  # PCM integers -> [-1, 1)
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    elif np.issubdtype(x.dtype, np.floating):
        check_samples(name, x)  # before the cast to float32 and the down-mix, which would overflow
    else:
        raise AudioError(f"{name}: unsupported sample type {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if x.size == 0:
        raise AudioError(f"{name}: no samples")
    check_rate(name, source_rate)
    if source_rate != sample_rate:
        import soxr

        x = soxr.resample(x, source_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x)


def normalize(x: np.ndarray, do_normalize: bool) -> np.ndarray:
    """Zero mean, unit variance over the utterance (transformers' zero_mean_unit_var_norm, same float32 maths)."""
    x = np.asarray(x, dtype=np.float32)
    if not do_normalize:
        return x
    return normalize_with(x, x.mean(), x.var())


def normalize_with(x: np.ndarray, mean: np.float32, var: np.float32) -> np.ndarray:
    """`normalize` with the mean and variance given (of the whole file, for a window of it)."""
    return (x - mean) / np.sqrt(var + NORMALIZE_EPS)
