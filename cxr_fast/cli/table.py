"""`table`: build a dataset's canonical table, print class counts and problems."""
from ..data.load import load_table, print_table_report
from ..data.table import write_table
from ..core.args import as_bool, as_choice, as_int
from ..data.images import MAX_PIXELS, set_max_pixels


def table_command(source, root, task=None, out=None, valid_pct=0.2, test_pct=0.0, seed=42, classes=None,
                  dedup="warn", show_batch=None, summary=False, size=224, max_pixels=MAX_PIXELS, **options):
    """Build the canonical table of a dataset, print class counts per split and every problem found.

    Args:
      source: coronahack, folders, siim, phantom (or several joined by '+'; or 'table' for a saved CSV)
      root: the dataset folder (comma-separated, one per source)
      task: the task (e.g. normal-vs-pneumonia, 3class, multilabel; `folders` for class folders)
      out: write the table here as CSV (+ a .json of its classes and problems)
      valid_pct: fraction of the train pool (whole patients) carved out for validation
      test_pct: fraction carved out for test when the source has no test split
      classes: map/merge/select classes, e.g. 'COVID-19->Infected,Pneumonia->Infected,Normal'
      dedup: warn | drop | off: near-duplicate images across splits
      show_batch: save a PNG of one augmented training batch here
      summary: print fastai's DataBlock.summary for the first item
      max_pixels: larger images (width x height, from the header) are an unreadable row, never decoded
      options: source options, e.g. --balance 0.045 --kaggle-split false (coronahack), --multi-image skip (siim)
    """
    dedup = as_choice(dedup, ["warn", "drop", "off"], "dedup")
    set_max_pixels(as_int(max_pixels, "max-pixels", 1))
    df = load_table(source, root, task, valid_pct, test_pct, seed, classes, dedup, **options)
    print_table_report(df)
    if out:
        write_table(df, out)
        print(f"\nwrote {out}")
    if show_batch or as_bool(summary, "summary"):
        from ..data.blocks import cxr_datablock, get_dls, save_show_batch, train_valid
        if as_bool(summary, "summary"):
            part = train_valid(df)
            cxr_datablock(part, as_int(size, "size", 16)).summary(part.head(16), bs=4)
        if show_batch:
            save_show_batch(get_dls(df, size=as_int(size, "size", 16), bs=16, num_workers=0), show_batch)
            print(f"wrote {show_batch}")
    return 0
