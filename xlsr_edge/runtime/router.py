"""Multi-language pieces in numpy: per-language CTC heads, the language-ID classifier, CTC confidence.

One backbone graph runs once per utterance; a head is a Linear (hidden -> vocab) applied here, so adding a
language costs a few hundred KB, not another XLS-R.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlsr_edge.errors import BundleError
from xlsr_edge.runtime.runners import Runner


def _arrays(path: Path, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The named arrays of an .npz file of the bundle; BundleError naming the file when it is not one.

    `path` comes from xlsr_edge.bundle.bundle_path (inside the bundle); pickled objects are never loaded.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {n: np.asarray(z[n]) for n in names + tuple(o for o in optional if o in z.files)}
    except Exception as exc:  # zipfile, OSError, ValueError (pickle), KeyError (missing array)
        raise BundleError(f"cannot read {path.name} of the bundle ({exc}); re-export the bundle") from exc


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # [vocab, hidden]
    bias: np.ndarray  # [vocab]
    # MMS: the language's attention-adapter weights, fed to the backbone graph as its `adapter_weights` input
    adapter: np.ndarray | None = None

    def apply(self, hidden: np.ndarray) -> np.ndarray:
        return hidden @ self.weight.T + self.bias

    @classmethod
    def load(cls, path: Path) -> Head:
        z = _arrays(Path(path), ("weight", "bias"), optional=("adapter",))
        w, b = z["weight"], z["bias"]
        if w.ndim != 2 or b.shape != w.shape[:1] or w.dtype.kind != "f" or b.dtype.kind != "f":
            raise BundleError(
                f"{Path(path).name} is not a CTC head: weight {w.dtype}{list(w.shape)}, bias {b.dtype}{list(b.shape)}"
            )
        adapter = z.get("adapter")
        if adapter is not None and (adapter.ndim != 1 or adapter.dtype.kind != "f"):
            raise BundleError(
                f"{Path(path).name}: the adapter weights must be a vector, found {list(adapter.shape)}"
            )
        return cls(
            w.astype(np.float32),
            b.astype(np.float32),
            None if adapter is None else adapter.astype(np.float32),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"weight": self.weight, "bias": self.bias}
        if self.adapter is not None:
            arrays["adapter"] = self.adapter
        with path.open("wb") as f:  # a file object: np.savez would append .npz to a str path
            np.savez(f, **arrays)


class HeadRunner(Runner):
    """A backbone runner plus one head: behaves like a single-language CTC runner (forced language, gates)."""

    name = "head"

    def __init__(self, backbone: Runner, head: Head) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.max_batch, self.max_samples = backbone.max_batch, backbone.max_samples

    def _activate(self) -> None:
        self.backbone.activate()

    def _deactivate(self) -> None:
        self.backbone.deactivate()

    def infer(self, input_values, attention_mask):
        if self.head.adapter is not None:  # MMS: this language's adapters inside the shared body
            self.backbone.adapter_weights = self.head.adapter
        hidden, lengths = self.backbone.infer(input_values, attention_mask)
        return self.head.apply(hidden), lengths


def pool(hidden: np.ndarray) -> np.ndarray:
    """Utterance embedding for language ID: mean and standard deviation over the valid frames."""
    h = hidden.astype(np.float64)
    return np.concatenate([h.mean(axis=0), h.std(axis=0)]).astype(np.float32)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def ctc_confidence(logits: np.ndarray) -> float:
    """Mean best-path log-probability per frame: how sure a head is of its own transcript."""
    if logits.shape[0] == 0:
        return float("-inf")
    return float(log_softmax(logits.astype(np.float64)).max(axis=-1).mean())


@dataclass(frozen=True)
class LanguageId:
    """Multinomial logistic regression on standardized pooled backbone features."""

    languages: tuple[str, ...]
    weight: np.ndarray  # [languages, features]
    bias: np.ndarray  # [languages]
    mean: np.ndarray  # [features]
    scale: np.ndarray  # [features]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = ((np.atleast_2d(features) - self.mean) / self.scale) @ self.weight.T + self.bias
        return np.exp(log_softmax(z))

    def predict(self, features: np.ndarray) -> list[tuple[str, float]]:
        p = self.probabilities(features)
        return [(self.languages[i], float(row[i])) for row, i in zip(p, p.argmax(axis=1))]

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: list[str], *, l2: float = 1e-2, steps: int = 500, lr: float = 0.1
    ) -> LanguageId:
        """Full-batch gradient descent (Adam) on the cross-entropy; deterministic, numpy only."""
        languages = tuple(sorted(set(labels)))
        if len(languages) < 2:
            raise ValueError("language ID needs utterances of at least two languages")
        x = np.asarray(features, dtype=np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        x = (x - mean) / scale
        y = np.array([languages.index(lb) for lb in labels])
        onehot = np.eye(len(languages))[y]
        w = np.zeros((len(languages), x.shape[1]))
        b = np.zeros(len(languages))
        m_w, v_w, m_b, v_b = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b))
        for t in range(1, steps + 1):
            p = np.exp(log_softmax(x @ w.T + b))
            g = (p - onehot) / len(x)
            gw, gb = g.T @ x + l2 * w, g.sum(axis=0)
            for param, grad, m, v in ((w, gw, m_w, v_w), (b, gb, m_b, v_b)):
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad**2
                param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        f32 = np.float32
        return cls(languages, w.astype(f32), b.astype(f32), mean.astype(f32), scale.astype(f32))

    def save(self, path: Path) -> None:
        with path.open("wb") as f:
            np.savez(
                f,
                languages=np.array(self.languages),
                weight=self.weight,
                bias=self.bias,
                mean=self.mean,
                scale=self.scale,
            )

    @classmethod
    def load(cls, path: Path) -> LanguageId:
        z = _arrays(Path(path), ("languages", "weight", "bias", "mean", "scale"))
        langs, w = z["languages"], z["weight"]
        n = len(langs) if langs.ndim == 1 else -1
        if not (
            langs.dtype.kind == "U"
            and w.ndim == 2
            and w.shape[0] == n
            and z["bias"].shape == (n,)
            and z["mean"].shape == z["scale"].shape == w.shape[1:]
            and all(z[k].dtype.kind == "f" for k in ("weight", "bias", "mean", "scale"))
        ):
            raise BundleError(f"{Path(path).name} is not a language-ID model: its arrays do not fit together")
        return cls(tuple(str(s) for s in langs), w, z["bias"], z["mean"], z["scale"])
