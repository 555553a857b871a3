"""A synthetic speech corpus from espeak-ng: frequency-drawn sentences, varied voices, NeMo JSONL manifests.

What a corpus is made of (all decided by ``--seed``; the same seed and options give byte-identical manifests):

* **Words**: the ``top_words`` most frequent words of the language from ``wordfreq`` (its data ships inside
  the wheel, no network), or a small built-in list when wordfreq is not installed. Every word goes through
  ``xlsr_edge.text.normalize_text(word, language)`` and is kept only when it then consists of letters of
  the language's alphabet (``ALPHABETS``; letters per ``str.isalpha`` for languages not listed). So **words
  with digits are excluded** (no number is ever spelled out: espeak-ng would read "1923" in its own way and
  the transcript could not say how), and so are words with apostrophes (Turkish "türkiye'nin") and foreign
  letters (q, w, x in Turkish).
* **Sentences**: 3–10 words (uniform), each word drawn with probability proportional to
  ``frequency ** freq_power``: 1.0 (the default) follows the language's real word frequencies, so common
  words recur as in real text; below 1 flattens Zipf's law so that rarer words appear more often (harder:
  with 0.5 most words are seen once or twice in a corpus of a few hours). A sentence is never used twice.
  The transcript is the normalized sentence.
* **Voices**: espeak-ng voice variants (``tr``, ``tr+m3``, ``tr+f2``, ...) drawn per utterance, speed
  140–190 words per minute and pitch 30–70, all drawn from the seeded generator.
* **Audio**: espeak-ng's 22.05 kHz output resampled with soxr to 16 kHz mono, written as 16-bit FLAC.
  ``duration`` in the manifests is the FLAC's exact length in seconds (4 decimals).
* **Splits** by sentence (each sentence is spoken once): utterance ``i`` goes to dev or test whenever that
  split's count falls below ``round((i + 1) * share)``, so the shares hold for every prefix of the corpus.
  With ``holdout_voice`` that voice is never used for train/dev/test; instead every test sentence is
  spoken once more by it into ``test_voice.jsonl`` (an "accent" test on the same text).
* The corpus stops at the first utterance where train + dev + test reach ``hours``.

**Natural sentences** (``sentences``, `synth --sentences FILE`): instead of drawn word sequences, every line of
the file is spoken (``repeat`` times, each with its own drawn voice, speed and pitch) into one manifest,
``sentences.jsonl``, in file order, so an LM's effect can be measured on text with real word order. espeak-ng
reads the line as written (punctuation gives it its pauses); the transcript is the normalized line fitted to
the language's alphabet like an LM corpus (``xlsr_edge.lm.fit.TextFitter``: apostrophes removed,
``ankara'ya`` -> ``ankaraya``). A line with a word the alphabet cannot spell (digits, foreign letters) is left
out and counted: espeak-ng would say it in a way no transcript can write. ``hours`` is then an optional cap.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xlsr_edge.errors import XlsrEdgeError
from xlsr_edge.outputs import OutputKind, atomic_output, check_output, has_file
from xlsr_edge.text import normalize_text

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
HOLDOUT_SPLIT = "test_voice"
SENTENCES_SPLIT = "sentences"  # the one manifest of a corpus made from a sentence file
INFO_FILE = "synth.json"  # written last: a folder with it is a corpus this command wrote
CORPUS = OutputKind("speech corpus", "xlsr-edge synth", has_file(INFO_FILE))

# Letters of the alphabet a transcript may use, per language (after normalize_text).
ALPHABETS = {
    "tr": "abcçdefgğhıijklmnoöprsştuüvyz",
    "az": "abcçdeəfgğhxıijkqlmnoöprsştuüvyz",
    "en": "abcdefghijklmnopqrstuvwxyz",
    "id": "abcdefghijklmnopqrstuvwxyz",
    "ms": "abcdefghijklmnopqrstuvwxyz",
    "de": "abcdefghijklmnopqrstuvwxyzäöüß",
    "es": "abcdefghijklmnopqrstuvwxyzáéíñóúü",
}
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4")

# Used only when wordfreq is not installed: common words with rough relative frequencies (rank order).
BUILTIN_WORDS = {
    "tr": (
        "ve bir bu için de da çok ile ne daha en gibi olarak her kadar o olan ben var ama sonra ki iyi yok "
        "ya değil sen büyük yeni güzel sadece zaman ilk iki mi hiç ise oldu bile nasıl şey benim böyle son "
        "tek gün tüm önce bana biz şimdi artık yine ayrıca insan hem kendi yıl bunu olduğu göre hep diye "
        "bütün dünya başka kim hayat çünkü ancak zaten neden onun beni çocuk türk şekilde sonra iş kez "
        "tarafından olması aynı yer fazla üzerine karşı az önemli içinde olur burada herkes bazı göz kadın "
        "ev su yol baba anne kitap okul öğretmen öğrenci sabah akşam gece hava deniz dağ şehir köy araba "
        "kapı pencere masa sandalye ekmek çay kahve yemek elma kırmızı mavi yeşil sarı beyaz siyah küçük "
        "uzun kısa sıcak soğuk hızlı yavaş açık kapalı gelmek gitmek yapmak görmek bilmek istiyorum geldi "
        "gitti yaptı gördü dedi biliyorum seviyorum arkadaş kardeş müzik şarkı oyun haber para sağlık "
        "bugün yarın dün hafta ay sevgi mutlu üzgün doğru yanlış bahçe çiçek ağaç kuş kedi köpek"
    ),
    "en": (
        "the of and to a in is it you that he was for on are with as his they be at one have this from or "
        "had by word but what some we can out other were all there when up use your how said an each she "
        "which do their time if will way about many then them write would like so these her long make "
        "thing see him two has look more day could go come did number sound no most people my over know "
        "water than call first who may down side been now find any new work part take get place made live "
        "where after back little only round man year came show every good me give our under name very "
        "through just form sentence great think say help low line differ turn cause much mean before "
        "move right boy old too same tell does set three want air well also play small end put home read "
        "hand port large spell add even land here must big high such follow act why ask men change went "
        "light kind off need house picture try us again animal point mother world near build self earth"
    ),
}


@dataclass(frozen=True)
class SynthOptions:
    language: str
    hours: float | None  # None: only with sentences (every sentence, however long that takes)
    out: Path
    voices: tuple[str, ...] = ()  # empty: the language's default variants (VARIANTS)
    seed: int = 0
    jobs: int = 1
    holdout_voice: str | None = None
    dev_share: float = 0.05
    test_share: float = 0.05
    min_words: int = 3
    max_words: int = 10
    top_words: int = 20000
    freq_power: float = 1.0
    speed: tuple[int, int] = (140, 190)  # espeak-ng -s, words per minute
    pitch: tuple[int, int] = (30, 70)  # espeak-ng -p, 0-99
    overwrite: bool = False
    progress: bool = True
    sentences: Path | None = None  # a text file, one sentence per line, spoken instead of drawn words
    repeat: int = 1  # with sentences: each is spoken this many times (other voices)

    def __post_init__(self) -> None:
        if self.hours is None and self.sentences is None:
            raise XlsrEdgeError("--hours is required (unless --sentences FILE gives the text to speak)")
        if self.hours is not None and self.hours <= 0:
            raise XlsrEdgeError(f"--hours must be positive, got {self.hours}")
        if self.repeat < 1:
            raise XlsrEdgeError(f"--repeat must be at least 1, got {self.repeat}")
        if self.sentences is not None and self.holdout_voice:
            raise XlsrEdgeError("--holdout-voice does not apply to --sentences (one manifest, every voice)")
        if (
            not 0 <= self.dev_share < 1
            or not 0 <= self.test_share < 1
            or self.dev_share + self.test_share >= 1
        ):
            raise XlsrEdgeError("dev and test shares must be in [0, 1) and leave room for train")
        if not 1 <= self.min_words <= self.max_words:
            raise XlsrEdgeError(f"need 1 <= min words <= max words, got {self.min_words}, {self.max_words}")
        if self.jobs < 1:
            raise XlsrEdgeError("--jobs must be at least 1")


@dataclass(frozen=True)
class Plan:
    """One utterance to synthesize."""

    index: int
    split: str
    text: str
    voice: str
    speed: int
    pitch: int
    spoken: str | None = None  # what espeak-ng reads when it differs from the transcript (natural sentences)

    @property
    def audio(self) -> str:
        prefix = "v" if self.split == HOLDOUT_SPLIT else ""
        return f"audio/{prefix}{self.index:06d}.flac"


@dataclass
class SynthReport:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    word_source: str = ""
    dropped: list[str] = field(default_factory=list)  # sentences left out (words the alphabet cannot spell)
    fitted: list[str] = field(default_factory=list)  # what fitting the sentences to the alphabet changed


# -- text ---------------------------------------------------------------------------------------------------


def base_language(language: str) -> str:
    return language.strip().lower().replace("_", "-").split("-")[0]


def usable_word(word: str, language: str) -> str | None:
    """The normalized word if it is a single word of the language's letters only, else None."""
    w = normalize_text(word, language)
    if not w or " " in w:
        return None
    letters = ALPHABETS.get(base_language(language))
    ok = all(ch in letters for ch in w) if letters else w.isalpha()
    return w if ok else None


def load_words(language: str, top_n: int) -> tuple[list[str], np.ndarray, str]:
    """(words, relative frequencies, description of the source); words are normalized and usable."""
    lang = base_language(language)
    try:
        import wordfreq
    except ImportError:
        wordfreq = None
    pairs: list[tuple[str, float]] = []
    if wordfreq is not None:
        try:
            raw = wordfreq.top_n_list(lang, top_n * 2)
        except LookupError:
            raw = []
        if raw:
            source = f"wordfreq {_version('wordfreq')} top {top_n} ({lang})"
            pairs = [(w, wordfreq.word_frequency(w, lang)) for w in raw]
    if not pairs:
        if lang not in BUILTIN_WORDS:
            raise XlsrEdgeError(
                f"no word list for language {language!r}: pip install wordfreq (the 'train' extra) or "
                f"use one of the built-in lists ({', '.join(sorted(BUILTIN_WORDS))})"
            )
        raw = BUILTIN_WORDS[lang].split()
        # Zipf-like frequencies from the rank order
        pairs = [(w, 1.0 / (rank + 1)) for rank, w in enumerate(raw)]
        source = f"built-in list of {len(raw)} words ({lang}); install wordfreq for a real vocabulary"
    seen: dict[str, float] = {}
    for w, f in pairs:
        u = usable_word(w, language)
        if u is not None and f > 0:
            seen[u] = seen.get(u, 0.0) + f
        if len(seen) >= top_n:
            break
    if len(seen) < 10:
        raise XlsrEdgeError(f"only {len(seen)} usable words for {language!r}; check the language code")
    words = list(seen)
    return words, np.array([seen[w] for w in words], dtype=np.float64), source


def sentence_sampler(
    words: Sequence[str], freqs: np.ndarray, rng: np.random.Generator, options: SynthOptions
):
    """Yield distinct sentences forever (raises when the word list cannot make new ones)."""
    p = np.asarray(freqs, dtype=np.float64) ** options.freq_power
    p /= p.sum()
    used: set[str] = set()
    while True:
        for _ in range(1000):
            n = int(rng.integers(options.min_words, options.max_words + 1))
            s = " ".join(words[i] for i in rng.choice(len(words), size=n, p=p))
            if s not in used:
                used.add(s)
                yield s
                break
        else:
            raise XlsrEdgeError("the word list is too small for this many distinct sentences; lower --hours")


def split_of(i: int, counts: dict[str, int], dev_share: float, test_share: float) -> str:
    """dev/test whenever that split falls behind its share of the first i+1 utterances, else train."""
    for split, share in (("dev", dev_share), ("test", test_share)):
        if counts.get(split, 0) < math.floor((i + 1) * share + 0.5):
            return split
    return "train"


def default_voices(language: str) -> list[str]:
    return [base_language(language) + v for v in VARIANTS]


# -- audio --------------------------------------------------------------------------------------------------


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise XlsrEdgeError("espeak-ng is not installed: apt-get install espeak-ng")
    return exe


def synthesize(text: str, voice: str, speed: int, pitch: int, exe: str | None = None) -> np.ndarray:
    """espeak-ng speech as float32 mono at 16 kHz."""
    import soundfile as sf
    import soxr

    cmd = [exe or espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text + "."]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise XlsrEdgeError(f"espeak-ng failed for voice {voice!r}: {err or 'no audio'}")
    x, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if x.ndim == 2:
        x = x.mean(axis=1)
    y = soxr.resample(x, sr, SAMPLE_RATE, quality="HQ") if sr != SAMPLE_RATE else x
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def check_voice(voice: str, exe: str) -> None:
    """Fail early (and clearly) on a voice name espeak-ng does not know."""
    proc = subprocess.run([exe, "-v", voice, "-q", "a"], capture_output=True, check=False)
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or err:
        raise XlsrEdgeError(f"espeak-ng does not know the voice {voice!r} ({err}); see espeak-ng --voices")


def _render(plan: Plan, out: Path, exe: str) -> float:
    import soundfile as sf

    y = synthesize(plan.spoken or plan.text, plan.voice, plan.speed, plan.pitch, exe)
    path = out / plan.audio
    sf.write(str(path), y, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return round(len(y) / SAMPLE_RATE, 4)


def _line(plan: Plan, duration: float) -> str:
    obj = {
        "audio_filepath": plan.audio,
        "duration": duration,
        "text": plan.text,
        "voice": plan.voice,
        "speed": plan.speed,
        "pitch": plan.pitch,
    }
    return json.dumps(obj, ensure_ascii=False)


# -- corpus -------------------------------------------------------------------------------------------------


def plan_stream(options: SynthOptions, words: Sequence[str], freqs: np.ndarray, voices: Sequence[str]):
    """Yield Plans in corpus order (deterministic for the seed)."""
    rng = np.random.default_rng(options.seed)
    counts: dict[str, int] = {}
    sentences = sentence_sampler(words, freqs, rng, options)
    for i, text in enumerate(sentences):
        split = split_of(i, counts, options.dev_share, options.test_share)
        counts[split] = counts.get(split, 0) + 1
        voice = voices[int(rng.integers(len(voices)))]
        speed = int(rng.integers(options.speed[0], options.speed[1] + 1))
        pitch = int(rng.integers(options.pitch[0], options.pitch[1] + 1))
        yield Plan(i, split, text, voice, speed, pitch)


def holdout_plan(plan: Plan, voice: str, seed: int) -> Plan:
    rng = np.random.default_rng([seed, plan.index, 7])
    return Plan(
        plan.index, HOLDOUT_SPLIT, plan.text, voice, int(rng.integers(140, 191)), int(rng.integers(30, 71))
    )


def read_sentences(path: Path, language: str) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(spoken line, transcript) per usable line of a sentence file, the lines left out, and what fitting the
    transcripts to the language's alphabet changed (see the module docstring)."""
    from xlsr_edge.lm.fit import TextFitter

    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise XlsrEdgeError(f"--sentences: {path} not found") from None
    except UnicodeDecodeError as exc:
        raise XlsrEdgeError(f"--sentences: {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise XlsrEdgeError(f"--sentences: cannot read {path}: {exc.strerror or exc}") from None
    letters = ALPHABETS.get(base_language(language))
    fitter = TextFitter(letters) if letters else None
    kept: list[tuple[str, str]] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for line in lines:
        spoken = " ".join(line.split())
        text = normalize_text(spoken, language)
        if not text:
            continue
        if fitter is not None:
            ok = all(TextFitter(letters).word(w) is not None for w in text.split())  # a probe: counts nothing
            if ok:
                text = fitter.line(text)
        else:
            ok = all(w.replace("'", "").isalpha() for w in text.split())
        if not ok:
            dropped.append(spoken)
        elif text not in seen:  # each sentence once: a repeated line would count twice in every score
            seen.add(text)
            kept.append((spoken, text))
    if not kept:
        raise XlsrEdgeError(f"--sentences: {path} has no sentence the {language!r} alphabet can spell")
    fitted = fitter.fit.summary(f"the {language} alphabet") if fitter is not None else []
    return kept, dropped, fitted


def _build_from_sentences(options: SynthOptions, out: Path, exe: str, voices: Sequence[str]) -> SynthReport:
    """Speak every sentence of options.sentences (x repeat) into sentences.jsonl, in file order."""
    from tqdm import tqdm

    sentences, dropped, fitted = read_sentences(options.sentences, options.language)
    rng = np.random.default_rng(options.seed)
    plans = []
    for spoken, text in sentences:
        for _ in range(options.repeat):
            voice = voices[int(rng.integers(len(voices)))]
            speed = int(rng.integers(options.speed[0], options.speed[1] + 1))
            pitch = int(rng.integers(options.pitch[0], options.pitch[1] + 1))
            plans.append(Plan(len(plans), SENTENCES_SPLIT, text, voice, speed, pitch, spoken=spoken))
    target = options.hours * 3600.0 if options.hours is not None else math.inf
    report = SynthReport(out=out, word_source=f"sentences from {options.sentences}")
    report.dropped, report.fitted = dropped, fitted
    lines: list[str] = []
    done = 0.0
    with (
        atomic_output(out, CORPUS, overwrite=options.overwrite) as tmp,
        ThreadPoolExecutor(options.jobs) as pool,
    ):
        (tmp / "audio").mkdir()
        bar = tqdm(total=len(plans), unit="utt", desc="synth", disable=not options.progress)
        step = 16 * options.jobs
        for start in range(0, len(plans), step):
            if done >= target:
                break
            chunk = plans[start : start + step]
            for p, d in zip(chunk, pool.map(lambda p: _render(p, tmp, exe), chunk)):
                if done >= target:
                    (tmp / p.audio).unlink()
                    continue
                lines.append(_line(p, d))
                done += d
                bar.update(1)
        bar.close()
        (tmp / f"{SENTENCES_SPLIT}.jsonl").write_text(
            "".join(line + "\n" for line in lines), encoding="utf-8"
        )
        report.counts[SENTENCES_SPLIT] = len(lines)
        report.seconds[SENTENCES_SPLIT] = round(done, 2)
        info = {
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "voices": list(voices),
            "words": report.word_source,
            "espeak_ng": _espeak_version(exe),
            "counts": report.counts,
            "seconds": report.seconds,
            "sentences_dropped": dropped,
            "text": "espeak-ng reads each line as written; the transcript is normalize_text(line, language) "
            "with apostrophes removed and letters outside the language's alphabet mapped to base letters; "
            "lines with words the alphabet cannot spell (digits, foreign letters) are left out",
        }
        for key in (
            "progress",
            "out",
            "overwrite",
            "jobs",
            "top_words",
            "freq_power",
            "dev_share",
            "test_share",
        ):
            info["options"].pop(key, None)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def build_corpus(options: SynthOptions) -> SynthReport:
    """Synthesize the corpus into ``options.out`` (written atomically: a failure leaves nothing behind)."""
    from tqdm import tqdm

    out = Path(options.out)
    check_output(out, CORPUS, overwrite=options.overwrite)  # before any work; never someone else's folder
    exe = espeak_binary()
    voices = list(options.voices) or default_voices(options.language)
    if options.holdout_voice:
        voices = [v for v in voices if v != options.holdout_voice]
        if not voices:
            raise XlsrEdgeError("--holdout-voice leaves no voice for train/dev/test; give more --voices")
    for v in voices + ([options.holdout_voice] if options.holdout_voice else []):
        check_voice(v, exe)
    if options.sentences is not None:
        return _build_from_sentences(options, out, exe, voices)
    words, freqs, source = load_words(options.language, options.top_words)
    target = options.hours * 3600.0
    report = SynthReport(out=out, word_source=source)
    lines: dict[str, list[str]] = {s: [] for s in (*SPLITS, HOLDOUT_SPLIT)}
    seconds = {s: 0.0 for s in lines}
    batch_size = 16 * options.jobs
    with (
        atomic_output(out, CORPUS, overwrite=options.overwrite) as tmp,
        ThreadPoolExecutor(options.jobs) as pool,
    ):
        (tmp / "audio").mkdir()
        bar = tqdm(total=round(target), unit="s", desc="synth", disable=not options.progress)
        stream = plan_stream(options, words, freqs, voices)
        done = 0.0
        while done < target:
            plans = [next(stream) for _ in range(batch_size)]
            extra = []
            if options.holdout_voice:
                extra = [
                    holdout_plan(p, options.holdout_voice, options.seed) for p in plans if p.split == "test"
                ]
            rendered = plans + extra
            by_plan = dict(zip(rendered, pool.map(lambda p: _render(p, tmp, exe), rendered)))
            held = {p.index: h for p, h in zip([p for p in plans if p.split == "test"], extra)}
            for p in plans:
                h = held.get(p.index)
                if done >= target:
                    # past the target: the rest of this batch is not part of the corpus
                    for q in (p, h):
                        if q is not None:
                            (tmp / q.audio).unlink()
                    continue
                d = by_plan[p]
                lines[p.split].append(_line(p, d))
                seconds[p.split] += d
                done += d
                bar.update(min(d, max(0.0, target - bar.n)))
                if h is not None:
                    lines[HOLDOUT_SPLIT].append(_line(h, by_plan[h]))
                    seconds[HOLDOUT_SPLIT] += by_plan[h]
        bar.close()
        for split, ls in lines.items():
            if split == HOLDOUT_SPLIT and not options.holdout_voice:
                continue
            (tmp / f"{split}.jsonl").write_text("".join(line + "\n" for line in ls), encoding="utf-8")
            report.counts[split] = len(ls)
            report.seconds[split] = round(seconds[split], 2)
        info = {
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "voices": voices,
            "words": source,
            "espeak_ng": _espeak_version(exe),
            "counts": report.counts,
            "seconds": report.seconds,
            "text": "normalize_text(sentence, language); words with digits, apostrophes or letters outside "
            "the language's alphabet are excluded (numbers are never spelled out)",
        }
        for key in ("progress", "out", "overwrite", "jobs"):  # do not change the corpus
            info["options"].pop(key, None)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _espeak_version(exe: str) -> str:
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip().split("Data at")[0].strip()
