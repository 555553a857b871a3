"""Static INT8 in the explicit Q/DQ form TensorRT consumes: symmetric int8 activations calibrated on the user's
speech, per-channel int8 weights, Q/DQ on the MatMul inputs only (``OpTypesToExcludeOutputQuantization``).

Calibration collects one utterance per pass (onnxruntime's histogram calibrators merge their histograms
between passes), so utterances of any length work with every method and memory stays bounded; the
onnxruntime-only route (one ``collect_data`` over a list of different lengths) crashes Entropy/Percentile
with "inhomogeneous shape".
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_edge.constants import ATTENTION_MASK, EXTERNAL_DATA_THRESHOLD, INPUT_VALUES
from xlsr_edge.errors import ExportError, XlsrEdgeError, require
from xlsr_edge.precision.calibration_set import CalibrationSet
from xlsr_edge.precision.graph import (
    graph_bytes,
    iter_graph_files,
    ort_quantization,
    preprocess,
    quiet,
    save_graph,
    shapes_read_float,
)
from xlsr_edge.precision.options import (
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_PERCENTILE,
    DEFAULT_QUANTIZE_GROUPS,
)
from xlsr_edge.precision.selection import select_nodes


def _reader_base():
    require("onnxruntime", "export")
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class ManifestCalibrationReader(_reader_base()):  # type: ignore[misc]
    """onnxruntime ``CalibrationDataReader`` over a CalibrationSet: one utterance per ``get_next`` ([1, L]).

    ``fixed_samples`` pads (zeros, mask 0) or centre-crops every utterance to one length, for callers that
    pass the reader straight to ``quantize_static`` with Entropy/Percentile (which need equal shapes).
    Models without an attention mask are never padded: short utterances are repeated to the length instead.
    Supports ``set_range`` (onnxruntime's strided calibration) and ``rewind``.
    """

    def __init__(self, arrays: Sequence[np.ndarray], uses_mask: bool, fixed_samples: int | None = None):
        self.arrays = list(arrays)
        self.uses_mask = uses_mask
        self.fixed_samples = fixed_samples
        self._start, self._end, self._pos = 0, len(self.arrays), 0

    def __len__(self) -> int:
        return len(self.arrays)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self.arrays))
        self._pos = self._start

    def rewind(self) -> None:
        self._start, self._end, self._pos = 0, len(self.arrays), 0

    def feeds(self, x: np.ndarray) -> dict[str, np.ndarray]:
        mask = np.ones(len(x), dtype=np.int64)
        n = self.fixed_samples
        if n is not None and len(x) > n:
            start = (len(x) - n) // 2
            x, mask = x[start : start + n], mask[:n]
        elif n is not None and len(x) < n:
            if self.uses_mask:
                x = np.concatenate([x, np.zeros(n - len(x), np.float32)])
                mask = np.concatenate([mask, np.zeros(n - len(mask), np.int64)])
            else:
                x, mask = np.resize(x, n), np.ones(n, dtype=np.int64)
        out = {INPUT_VALUES: np.ascontiguousarray(x, dtype=np.float32)[None]}
        if self.uses_mask:
            out[ATTENTION_MASK] = mask[None]
        return out

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._end:
            return None
        self._pos += 1
        return self.feeds(self.arrays[self._pos - 1])


class _One(_reader_base()):  # type: ignore[misc]
    def __init__(self, feeds: dict[str, np.ndarray]):
        self._feeds: dict[str, np.ndarray] | None = feeds

    def get_next(self):
        feeds, self._feeds = self._feeds, None
        return feeds


def calibrate_ranges(
    model_path: Path,
    calib: CalibrationSet,
    uses_mask: bool,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    op_types: Sequence[str] = ("MatMul",),
    percentile: float = DEFAULT_PERCENTILE,
    num_bins: int = 2048,
    only_tensors: Sequence[str] | None = None,
    work: Path,
):
    """Activation ranges over the calibration set, one utterance per pass. Returns onnxruntime TensorsData."""
    q = ort_quantization()
    from onnxruntime.quantization.calibrate import create_calibrator

    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}, got {method!r}")
    extra: dict[str, Any] = {"symmetric": True}
    if method == "percentile":
        extra.update(num_bins=num_bins, percentile=percentile)
    elif method == "entropy":
        # onnxruntime's default (128 bins) equals MinMax; 2048 bins is the TensorRT-style KL calibration
        extra.update(num_bins=num_bins, num_quantized_bins=128)
    calibrator = create_calibrator(
        Path(model_path),
        list(op_types),
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=methods[method],
        use_external_data_format=graph_bytes(model_path) > EXTERNAL_DATA_THRESHOLD,
        extra_options=extra,
    )
    if only_tensors is not None and getattr(calibrator, "tensors_to_calibrate", None) is not None:
        # histograms (and their threshold search) only for the tensors that get a Q/DQ pair
        calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) & set(only_tensors)
    reader = ManifestCalibrationReader(calib.arrays, uses_mask)
    try:
        # one utterance per pass: every calibrator merges its ranges/histograms between passes, so any
        # lengths work and only one utterance's intermediate tensors are held at a time
        for feeds in iter(reader.get_next, None):
            calibrator.collect_data(_One(feeds))
        return calibrator.compute_data()
    finally:
        del calibrator


def quantize_int8_static(
    src: Path,
    dst: Path,
    calib: CalibrationSet,
    uses_mask: bool,
    *,
    method: str = DEFAULT_CALIBRATION_METHOD,
    quantize_groups: Sequence[str] = DEFAULT_QUANTIZE_GROUPS,
    exclude: Sequence[str] = (),
    percentile: float = DEFAULT_PERCENTILE,
) -> dict[str, Any]:
    """Static INT8 in explicit Q/DQ form: Q/DQ pairs on the inputs of the selected MatMuls only."""
    import onnx
    from onnxruntime.quantization.calibrate import save_tensors_data

    q = ort_quantization()
    work = Path(tempfile.mkdtemp(prefix="xlsr-int8s-", dir=dst.parent))
    try:
        pre = work / "pre.onnx"
        fused = preprocess(src, pre)
        pre_model = onnx.load(str(pre), load_external_data=False)
        sel = select_nodes(pre_model, quantize_groups, exclude)
        inits = {i.name for i in pre_model.graph.initializer}
        chosen = set(sel.quantize)
        activations = {i for n in pre_model.graph.node if n.name in chosen for i in n.input if i not in inits}
        del pre_model
        op_types = sorted({"MatMul" if g in ("Attention", "FeatureEncoder") else g for g in quantize_groups})
        try:
            with quiet():
                ranges = calibrate_ranges(
                    pre,
                    calib,
                    uses_mask,
                    method=method,
                    op_types=op_types,
                    percentile=percentile,
                    only_tensors=activations,
                    work=work,
                )
                cache = work / "calibration.json"
                save_tensors_data(ranges, cache)
                q.quantize_static(
                    str(pre),
                    str(dst),
                    calibration_data_reader=None,
                    calibration_cache_path=str(cache),
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    nodes_to_quantize=sel.quantize,
                    per_channel=True,
                    reduce_range=False,
                    activation_type=q.QuantType.QInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=ranges.calibration_method,
                    use_external_data_format=graph_bytes(pre) > EXTERNAL_DATA_THRESHOLD,
                    extra_options={
                        "ActivationSymmetric": True,
                        "WeightSymmetric": True,
                        # Q/DQ on MatMul inputs only, as TensorRT wants (and more accurate): no requantized output
                        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm", "Conv"],
                        "MatMulConstBOnly": "Attention" not in quantize_groups,
                        # one Q/DQ pair per consumer: onnxruntime fuses DQ->MatMul into MatMulIntegerToFloat
                        # only when the DequantizeLinear feeds that MatMul alone (q/k/v share an input)
                        "DedicatedQDQPair": True,
                    },
                )
        except XlsrEdgeError:
            raise
        except Exception as exc:
            raise ExportError(f"onnxruntime static quantization failed: {exc}") from exc
        quantized = onnx.load(str(dst))
        if shapes_read_float(quantized):
            for f in iter_graph_files(dst):
                f.unlink()
            save_graph(quantized, dst)
        del quantized
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "method": f"onnxruntime quantize_static, QDQ, {method} calibration",
        "calibration_method": method,
        **({"percentile": percentile} if method == "percentile" else {}),
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 symmetric (zero point 0), calibrated; Q/DQ on MatMul inputs only",
        "quantized_groups": dict(sel.groups),
        "kept_float_nodes": sel.kept_summary(),
        "matmuls_fused": fused,
    }
