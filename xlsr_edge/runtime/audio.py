"""Audio front end: read, down-mix, resample, normalize exactly as transformers' feature extractor does.

A file's header is checked before anything is read (kind of file, sample rate, duration against
``max_seconds``) and never trusted for an allocation: files are read in blocks and the header's length is
checked against what the stream holds. Short files (up to WHOLE_READ_MAX_SAMPLES decoded samples) are then
resampled in one go; longer ones are streamed twice (length and normalization statistics, then window by
window, see StreamedAudio), so memory does not grow with the file. soxr's stream resampler gives the same
samples as its one-shot resample, so both paths see the same audio.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.constants import DEFAULT_MAX_SECONDS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, NORMALIZE_EPS
from xlsr_edge.errors import AudioError

READ_BLOCK_FRAMES = 1 << 16
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
            x = block.mean(axis=1) if block.shape[1] > 1 else np.ascontiguousarray(block[:, 0])
            if not np.isfinite(x).all():
                raise AudioError(
                    f"{self.name}: NaN/inf samples at {at / self.source_rate:.1f} s; the file is corrupt"
                )
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
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    elif x.ndim != 1:
        raise AudioError(f"{name}: expected 1-D samples or [samples, channels], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.integer):  # PCM integers -> [-1, 1)
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
        else:
            raise AudioError(f"{name}: unsupported sample type {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError(f"{name}: no samples")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(f"{name}: {bad} NaN/inf samples; the file is corrupt")
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
