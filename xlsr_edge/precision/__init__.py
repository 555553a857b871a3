"""Precision passes on an exported fp32 graph: fp16, dynamic int8, static int8 (Q/DQ), and the accuracy gate.

`xlsr_edge.export` calls `convert.convert_precision` after its fp32 parity gate; this package never imports
`export` (the graph it works on is plain ONNX). Modules, by what changes together:

* ``options``: the facts (precisions, quantizable op groups, defaults) and option validation;
* ``graph``: graph rewrites (q/k/v MatMul fusion, Shape repointing, Identity folding), saving, op summaries;
* ``selection``: which nodes a quantizer touches (--quantize-ops, --exclude-ops, nodes kept float);
* ``calibration_set``: calibration utterances loaded with the runtime's front end;
* ``dynamic`` / ``static`` / ``fp16``: the converters (static holds its calibration reader);
* ``gate``: fp32 vs converted graph on transcribed speech (CER delta) or frame agreement;
* ``convert``: the export step that runs one converter and the gate and reports.

What int8 quantizes, by default: the transformer's MatMuls with a constant weight (q/k/v/out projections,
feed-forward: ~85 % of an XLS-R model's FLOPs, and they quantize well); not the CNN feature encoder (Conv:
naive INT8 destroys accuracy and ConvInteger has no fast CPU kernel; opt in with ``FeatureEncoder``, which
exports CNN layers 1-6 as MatMuls), not LayerNormalization/Softmax, not the attention score MatMuls
(activation x activation), not the feature projection and not the CTC head (tiny, and its logits decide
every frame's argmax).
"""
