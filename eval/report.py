"""Build one offline HTML page from eval results.

    python eval/report.py --runs DIR [DIR ...] --out report.html [--title TITLE]

Each DIR is a folder holding ``results.json`` (written by any ``eval/*.py`` script), or a folder searched
recursively for them. The page embeds every image, GIF and plot as a data URI, so it opens offline.
Layout of results.json: see ``mm1d/evaluation/report.py``.
"""

from __future__ import annotations

import argparse

from mm1d.evaluation.report import find_runs, write_report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="result folders (or folders holding several)")
    p.add_argument("--out", required=True, help="output .html file")
    p.add_argument("--title", default="mm1d evaluation report")
    args = p.parse_args(argv)
    try:
        runs = find_runs(args.runs)
    except FileNotFoundError as e:
        p.error(str(e))
    path = write_report(runs, args.out, args.title)
    print(f"wrote {path} ({len(runs)} run(s))")


if __name__ == "__main__":
    main()
