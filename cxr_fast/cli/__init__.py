"""`python -m cxr_fast <command>` / `cxr-fast <command>`: Fire over a small dict of commands.

Only the chosen command's module is imported, so `--help` and user errors answer quickly.
A `CxrError` (bad input, missing data or weights) prints one line and exits with status 2.
"""
import importlib
import sys
import warnings

from ..core.errors import CxrError

COMMANDS = {
    "demo": ("cxr_fast.cli.demo", "demo_command", "generate synthetic phantoms, train a small model, write a run folder"),
    "table": ("cxr_fast.cli.table", "table_command", "build the canonical table of a dataset; print class counts and problems"),
    "download": ("cxr_fast.cli.download", "download_command", "download a Kaggle dataset into data/"),
    "train": ("cxr_fast.cli.train", "train_command", "train a model on a dataset and write a run folder"),
    "evaluate": ("cxr_fast.cli.evaluate", "evaluate_command", "evaluate a trained model on a labelled dataset"),
    "audit": ("cxr_fast.cli.audit", "audit_command", "shortcut audit of a dataset or a run: file facts, border, sources"),
    "predict": ("cxr_fast.cli.predict", "predict_command", "predict images, folders, globs or a CSV of paths"),
    "export": ("cxr_fast.cli.export", "export_command", "export a model dir to ONNX (model.onnx; --int8) for predict --engine onnx"),
    "recipe": ("cxr_fast.cli.recipe", "recipe_command", "run a named experiment recipe (--list lists them)"),
    "tune": ("cxr_fast.cli.tune", "tune_command", "Optuna sweep over train or a recipe: a run folder per trial, shared study"),
    "compare": ("cxr_fast.cli.evaluate", "compare_command", "a markdown table of several runs' configurations and metrics"),
    "serve": ("cxr_fast.cli.serve", "serve_command", "a local web page: upload an X-ray, see probabilities, Grad-CAM, model card"),
}


def usage():
    "The top-level help text."
    lines = ["usage: python -m cxr_fast COMMAND [ARGS] (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    "Dispatch to one command; user errors become a one-line message and exit status 2."
    import fire
    # fastai's import calls torch.jit.script, which newer torch flags as deprecated: noise for a CLI user
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script.*")
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    command = getattr(importlib.import_module(module), func)
    try:
        result = fire.Fire(command, command=rest, name=f"cxr-fast {name}", serialize=lambda r: None)
    except CxrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except fire.core.FireExit as e:  # `train --help`: Fire shows the help on its "SOURCE ROOT missing" path (exit
        return 0 if {"-h", "--help"} & set(rest) else e.code  # 2); asked for, the help is an answer, not an error
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
