"""`xlsr-edge optimize`: measure precision x backend x hint on this machine under the accuracy gate, keep the fastest.

Modules, by what changes together:

* ``candidates``: what is worth trying on this CPU (graph variants x backends x OpenVINO hints, onnxruntime's
  int8 kernel choices per instruction-set class), and what is skipped with a reason. Pure functions.
* ``choose``: given the measurements, the gate results and the budget: the choice, the table, the record
  ``bundle.json`` keeps under ``"runtime"``. Pure functions.
* ``measure``: speed of one candidate side by side with the fp32 reference (each in its own process).
* ``pipeline``: export the graph variants, gate and measure each candidate, write ONE bundle.

The runtime reads the record back with ``xlsr_edge.runtime.tuned`` (no import of this package).
"""
