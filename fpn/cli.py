"""The ``fpn`` command line: ``fpn train|test|demo|export|synth|voc-eval|coco-eval|bench|convert|inspect``.

Each subcommand lives in ``fpn/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``;
this file only dispatches. A ``UserError`` becomes one line on stderr and its exit code (2; 3 a diverged
loss, 4 out of memory); a ``DataWarning`` one ``warning: ...`` line. Flags shared by several commands are defined
once, in :mod:`fpn.commands.flags`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from fpn.errors import DataWarning, OutOfMemory, UserError

# subcommand -> (module, one-line help); modules are imported lazily so `fpn --help` stays fast
COMMANDS = {
    "train": ("fpn.commands.train", "train a detector"),
    "test": ("fpn.commands.test", "evaluate a checkpoint on a dataset's test split"),
    "demo": ("fpn.commands.demo", "draw detections on images"),
    "export": ("fpn.commands.export", "export a checkpoint as an ONNX model or a torch.export program"),
    "synth": ("fpn.commands.synth", "write the synthetic dataset (VOC layout and/or COCO JSON)"),
    "voc-eval": ("fpn.commands.voc_eval", "evaluate VOC result files against a devkit"),
    "coco-eval": ("fpn.commands.coco_eval", "evaluate a COCO results file against COCO annotations"),
    "bench": ("fpn.commands.bench", "time training, inference and data loading"),
    "convert": ("fpn.commands.convert", "convert torchvision Faster R-CNN weights into an fpn checkpoint"),
    "inspect": ("fpn.commands.inspect", "summarise a dataset and draw its boxes before training"),
}


class OneLineErrors(argparse.ArgumentParser):
    """A usage mistake is one ``error: ...`` line naming the flag (``fpn COMMAND --help`` shows the usage), exit
    code 2, like every other mistake; subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"error: {message} ({self.prog} --help lists the flags)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="fpn", description="Feature Pyramid Network object detector")
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a usage error (2) already said in one line
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    _show_data_warnings_as_one_line()
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _out_of_memory_errors() as e:  # where no step names what it held (fpn.engine.device.out_of_memory)
        print(f"error: out of memory ({str(e).strip().splitlines()[0][:200]}); try a smaller --bs or smaller images",
              file=sys.stderr)  # fmt: skip
        return OutOfMemory.exit_code


def _out_of_memory_errors() -> tuple:
    from fpn.engine.device import OUT_OF_MEMORY

    return OUT_OF_MEMORY


def _show_data_warnings_as_one_line() -> None:
    """``warning: message`` for a DataWarning (bad boxes dropped ...); other warnings as Python shows them."""
    show = warnings.showwarning
    if getattr(show, "fpn_data_warnings", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.fpn_data_warnings = True
    warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())
