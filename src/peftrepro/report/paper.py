"""The papers' own numbers, the LoRA paper's (arXiv 2106.09685 v2) first, loaded from ``data/paper.csv``.

Every number the suite compares against lives in that one file, one cell per line:
``table,row,column,value,printed,source,note``. ``value`` is in the paper's printed unit
(accuracy in %, BLEU/METEOR/ROUGE-L ×100, NIST/CIDEr raw, parameter counts in millions,
latency in ms); ``printed`` is the string exactly as printed (with the paper's ± where it
gives one); ``source`` names the table and the section of docs/paper-reference.md it was
checked against; ``note`` carries units, cited-vs-own-run, COMPUTED counts and the paper's
own inconsistencies (e.g. W_q r=8 MNLI is 91.0 in Table 5 but 90.7 in Table 6: both rows
are kept, each note points at the other).

Row names follow the paper's labels, made unique where the paper repeats one:
table3 "GPT-2 M (LoRA)", "GPT-2 M (Adapter^L, 0.37M)", "GPT-2 M (FT^Top2)";
table4 "GPT-3 (LoRA, 4.7M)"; table5/table6 "W_q,W_v r=4"; table15 "LoRA r_q=r_v=8",
"PrefixLayer l_p=8,l_i=8", "Adapter^H r=1". Columns: trainable_params, wikisql, mnli,
bleu, nist, meteor, rouge_l, cider, table1's bs32_seq512 / bs16_seq256 / bs1_seq128.

The companion papers of the QLoRA and pruning tables are in the same file, their tables prefixed
by paper: qlora_table3 / qlora_table4 (Dettmers et al. 2023, arXiv 2305.14314; rows as printed,
e.g. "LoRA BF16", "QLoRA NF4 + DQ"; columns glue_roberta_large, sni_t5_80m ...) and sanh_table2
(Sanh et al. 2020, arXiv 2005.07683; rows "MaP 10%", "MvP 3%" ...; columns mnli, mnli_mm). A cell
a paper prints as "–" has no line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import pandas as pd

from peftrepro.errors import DataError

PAPER_CSV = "paper.csv"
REQUIRED_COLUMNS = ("table", "row", "column", "value", "printed", "source", "note")

# Factor that turns our raw metric (as the official scorers print it) into the paper's printed
# unit: the paper prints BLEU, METEOR, ROUGE-L and accuracies ×100, NIST and CIDEr raw.
PAPER_SCALE: dict[str, float] = {
    "bleu": 100.0,
    "meteor": 100.0,
    "rouge_l": 100.0,
    "nist": 1.0,
    "cider": 1.0,
    "lf_accuracy": 100.0,
    "ex_accuracy": 100.0,
    "accuracy_m": 100.0,
    "accuracy_mm": 100.0,
    "accuracy_dev": 100.0,  # MultiNLI's dev split (the learning-rate selection's metric)
}


def to_paper_unit(metric: str, raw: float) -> float:
    """Our raw metric value in the paper's printed unit (e.g. BLEU 0.704 -> 70.4)."""
    if metric not in PAPER_SCALE:
        raise DataError(f"no paper scale known for metric {metric!r}; known: {sorted(PAPER_SCALE)}")
    return raw * PAPER_SCALE[metric]


@lru_cache(maxsize=4)
def _load(path: str | None) -> pd.DataFrame:
    source = path or str(resources.files("peftrepro") / "data" / PAPER_CSV)
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as error:
        raise DataError(f"cannot read the paper's numbers from {source}: {error}") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{source} lacks column(s) {missing}; the header must be {','.join(REQUIRED_COLUMNS)}")
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = frame.index[values.isna()]
    if len(bad):
        first = frame.loc[bad[0]]
        raise DataError(
            f"{source} line {bad[0] + 2}: value {first['value']!r} for "
            f"{first['table']}/{first['row']}/{first['column']} is not a number; "
            "write the paper's number in its printed unit (e.g. 73.7, not '73.7%')"
        )
    frame["value"] = values.astype(float)
    dupes = frame[frame.duplicated(["table", "row", "column"], keep=False)]
    if len(dupes):
        cell = dupes.iloc[0]
        raise DataError(
            f"{source}: cell {cell['table']}/{cell['row']}/{cell['column']} appears more than once; "
            "a table may state each cell once (put the paper's contradictions under different tables)"
        )
    return frame


def load_paper(path: str | None = None) -> pd.DataFrame:
    """All paper numbers as a DataFrame with REQUIRED_COLUMNS (``value`` float), validated.

    Raises DataError naming the file and line when a column is missing, a value is not numeric
    or a (table, row, column) cell is repeated.
    """
    return _load(path).copy()


def paper_value(table: str, row: str, column: str, frame: pd.DataFrame | None = None) -> float | None:
    """The paper's value for one cell, or None when the paper has no such cell."""
    frame = load_paper() if frame is None else frame
    hit = frame[(frame["table"] == table) & (frame["row"] == row) & (frame["column"] == column)]
    return None if hit.empty else float(hit["value"].iloc[0])


_SPREAD = re.compile(r"±\s*(\d*\.?\d+)")


def printed_spread(printed: str) -> float | None:
    """The ± the paper printed beside a number ("70.4±.1" -> 0.1), or None when it gave none."""
    match = _SPREAD.search(printed)
    return float(match.group(1)) if match else None
