"""The study: fit-and-evaluate grids (benchmark, sweeps, ablation, seeds, executors), the evidence drawn
from them (evidence, pairwise, sizes, run_results, summaries, explain, wording), the report and the course
(report, course, exercises, explorer, exploration, own_parts) and the study's measurements (throughput,
dupbench).

It imports the core modules and anomaly.station below it; only the CLI imports it.
"""
