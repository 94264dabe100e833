"""The report of a dataset config's Pick-a-back run (its command: tools/report.py): what every stage produced, in
one Markdown file with figures and a CSV of every number.

    collect.py   what the stages wrote, read through their records (utils/layout.py), into one `Collected`
    evaluate.py  each backbone -> target chain's accuracy matrix, measured from its checkpoints
    metrics.py   continual-learning metrics on an accuracy matrix (pure functions, Avalanche's conventions)
    verdicts.py  the selection-rule comparison: mean ± std over seeds, agreement with the oracle, does picking pay
    sequence.py  the sequence run: its accuracy matrix, metrics and compactness, the order rules over seeds
    clients.py   the clients run (Pick-a-back's devices): per client its accuracy matrix, who borrowed from whom,
                 the bytes per round, the selection rules side by side (clients_comparison) and its figure
    figures.py   the PNG figures (matplotlib)
    markdown.py  the Markdown sections, each putting the numbers it shows into the CSV
    write.py     write_report: all of the above, into logs_perceiver_io/report_<cfg>.{md,csv} and its PNGs
"""
from utils.report.write import write_report  # noqa: F401
