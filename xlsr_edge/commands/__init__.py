"""The subcommands of `xlsr-edge`, one module each. Every module exposes ``register(subparsers)``, which adds
its parser(s) with ``set_defaults(fn=handler)``; a handler takes the argparse namespace and returns an exit
code. XlsrEdgeError / ValueError become the one `error:` line in xlsr_edge.cli. Heavy imports (torch,
onnx, transformers) stay inside the handlers, so `--help` is fast and the runtime commands run without them.
"""

# Order = the order of `xlsr-edge --help`.
COMMAND_MODULES = (
    "xlsr_edge.commands.export",
    "xlsr_edge.commands.optimize",
    "xlsr_edge.commands.inspect",
    "xlsr_edge.commands.transcribe",
    "xlsr_edge.commands.transcribe_dataset",
    "xlsr_edge.commands.stream",
    "xlsr_edge.commands.serve",
    "xlsr_edge.commands.evaluate",
    "xlsr_edge.commands.bench",
    "xlsr_edge.commands.lm",
    "xlsr_edge.commands.language",
    "xlsr_edge.commands.engine",
    "xlsr_edge.commands.synth",
    "xlsr_edge.commands.finetune",
)
