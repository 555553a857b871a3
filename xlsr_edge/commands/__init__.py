"""Subcommands of `xlsr-edge` that live in their own modules; each exposes `register(subparsers)`.

A handler registered with `set_defaults(fn=...)` receives the argparse namespace and returns an exit code;
XlsrEdgeError / ValueError become the one `error:` line in xlsr_edge.cli.
"""

COMMAND_MODULES = (
    "xlsr_edge.commands.evaluate",
    "xlsr_edge.commands.bench",
    "xlsr_edge.commands.train",
    "xlsr_edge.commands.engine",
)
