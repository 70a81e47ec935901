"""Getting a canonical table from command-line style arguments (one source, several, or a saved CSV)."""
import inspect

from ..core.args import as_choice, as_float, as_int, as_list, as_type_of
from ..core.errors import CxrError
from .sources import SOURCES, get_source
from .table import build_table, concat_tables, format_problems, read_table, summarize


LOADER_ARGS = ("root", "task", "seed")  # what every source's loader takes; the rest of its parameters are options


def source_option_names(source):
    "The options the source(s) of SOURCE ('a+b' for several) take besides root, task and seed; an unknown name none."
    names = []
    for name in str(source).split("+"):
        if name.strip() not in SOURCES: continue  # the command itself reports an unknown source
        names += [p for p in inspect.signature(get_source(name.strip()).load).parameters if p not in LOADER_ARGS]
    return list(dict.fromkeys(names))


def source_options(source, options):
    """The options `source`'s loader takes, each coerced to the type of the loader's default (the one place
    `--kaggle-split false` becomes False, for table, train and evaluate alike); any other option is an error."""
    params = inspect.signature(get_source(source).load).parameters
    given = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
    unknown = [k for k in given if k not in params]
    if unknown:
        valid = source_option_names(source)
        raise CxrError(f"option(s) {', '.join('--' + k for k in unknown)} do not apply to source {source}"
                       f"{'; it takes ' + ', '.join('--' + v for v in valid) if valid else ''}")
    return {k: as_type_of(v, params[k].default, k) for k, v in given.items()}


def typed_source_options(source, options):
    "Source options as the loader takes them (source_options) for one source; as given for 'table' or several."
    if source not in SOURCES: return dict(options)  # 'table', 'a+b', or an unknown name that load_table reports
    return source_options(source, options)


def load_table(source, root, task=None, valid_pct=0.2, test_pct=0.0, seed=42, classes=None, dedup="warn", check=True,
               **options):
    """The canonical table for `source` at `root`.

    source 'table' reads a CSV written by `table --out`. Several sources at once: join them with
    '+' and give one root (and task, and classes mapping separated by ';') per source, comma-separated:
    `coronahack+folders data/coronahack,data/darkcovidnet --task 3class,folders
    --classes ';Covid-19->COVID-19,No_findings->Normal,Pneumonia'`.
    check=False skips decoding every image (unreadable files stay in the table; the audit's file facts report them)."""
    if source == "table": return read_table(root)
    sources = str(source).split("+")
    roots = as_list(root, "ROOT") if len(sources) > 1 else [root]
    tasks = as_list(task, "task") if len(sources) > 1 else [task]
    maps = str(classes).split(";") if (len(sources) > 1 and classes) else [classes] * len(sources)
    if not (len(roots) == len(tasks) == len(maps) == len(sources)):
        raise CxrError(f"{len(sources)} sources need as many comma-separated roots and tasks "
                       f"(and ';'-separated --classes), got roots={roots} tasks={tasks}")
    tables = []
    for src, rt, tk, cm in zip(sources, roots, tasks, maps):
        as_choice(src, list(SOURCES) + ["table"], "source")
        if not tk: raise CxrError(f"--task is required for source {src}; choose one of: {', '.join(get_source(src).TASKS)}")
        tables.append(build_table(src, rt, tk, valid_pct=as_float(valid_pct, "valid-pct", 0, 0.9),
                                  test_pct=as_float(test_pct, "test-pct", 0, 0.9), seed=as_int(seed, "seed"),
                                  classes=cm or None, dedup=dedup, check=check, **source_options(src, options)))
    return tables[0] if len(tables) == 1 else concat_tables(tables)


def print_table_report(df, problem_limit=None):
    "Class counts per split and every problem found, as the `table` command prints them."
    print(f"source: {df.attrs.get('source')}  task: {df.attrs.get('task')}  classes: {', '.join(df.attrs.get('classes', []))}")
    print(f"split: {df.attrs.get('split_method', 'as given')}\n")
    print(summarize(df).to_string())
    problems = df.attrs.get("problems", [])
    print(f"\nproblems: {len(problems)}" + ("" if problems else " (none)"))
    for line in format_problems(problems, problem_limit): print(line)
