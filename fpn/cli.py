"""The ``fpn`` command line: ``fpn train|test|demo|export|synth|voc-eval|bench``.

Each subcommand lives in ``fpn/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``;
this file only dispatches. A ``UserError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fpn.errors import UserError

# subcommand -> (module, one-line help); modules are imported lazily so `fpn --help` stays fast
COMMANDS = {
    "train": ("fpn.commands.train", "train a detector"),
    "test": ("fpn.commands.test", "evaluate a checkpoint on a dataset's test split"),
    "demo": ("fpn.commands.demo", "draw detections on images"),
    "export": ("fpn.commands.export", "export a checkpoint as an ONNX model or a torch.export program"),
    "synth": ("fpn.commands.synth", "write the synthetic VOC-layout dataset"),
    "voc-eval": ("fpn.commands.voc_eval", "evaluate VOC result files against a devkit"),
    "bench": ("fpn.commands.bench", "time training, inference and data loading"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpn", description="Feature Pyramid Network object detector")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
