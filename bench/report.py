"""Markdown rendering of a benchmark run: one column per target, plus each target's ratio to etcd."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.targets import REFERENCE

DISTURBED_CORES = 0.2  # "other" CPU above this: something else competed with the run for the machine


@dataclass(frozen=True)
class CpuUse:
    """Average CPU cores busy during a measurement window."""

    server: float
    generator: float
    other: float  # everything else on the machine: if it is not near 0, the run was disturbed


@dataclass(frozen=True)
class Window:
    """A closed-loop measurement window: the operations per second completed and the CPU it took."""

    operations_per_second: float
    cpu: CpuUse


@dataclass(frozen=True)
class Measured:
    """One workload's numbers, in the order of its rows, and its window if it ran one."""

    values: tuple[float, ...]
    window: Window | None = None


@dataclass
class TargetRun:
    """Everything one target produced: numbers by workload, and the error of each workload that failed."""

    measured: dict[str, Measured] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadRows:
    """A workload's name and the labels of the table rows it fills."""

    name: str
    rows: tuple[str, ...]


def format_number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    aligns = ["---", *("---:" for _ in header[1:])]
    return [f"| {' | '.join(cells)} |" for cells in [header, aligns, *rows]]


def results_table(workloads: Sequence[WorkloadRows], runs: dict[str, TargetRun]) -> list[str]:
    compared = [target for target in runs if target != REFERENCE] if REFERENCE in runs else []
    header = ["workload"]
    for target in runs:
        header.append(target)
        if target in compared:
            header.append(f"{target} ÷ {REFERENCE}")

    def cell(target: str, workload: str, row: int) -> float | None:
        measured = runs[target].measured.get(workload)
        return measured.values[row] if measured else None

    lines = []
    for workload in workloads:
        for row, label in enumerate(workload.rows):
            reference = cell(REFERENCE, workload.name, row) if compared else None
            cells = [label]
            for target in runs:
                value = cell(target, workload.name, row)
                if value is not None:
                    cells.append(format_number(value))
                else:
                    cells.append("failed" if workload.name in runs[target].failures else "not run")
                if target in compared:
                    ratio = None if value is None or not reference else value / reference
                    cells.append("–" if ratio is None else f"{ratio:.2f}×")
            lines.append(cells)
    return markdown_table(header, lines)


def cpu_table(workloads: Sequence[WorkloadRows], runs: dict[str, TargetRun]) -> list[str]:
    header = ["CPU cores busy: server + generator + other", *runs]
    lines = []
    for workload in workloads:
        windows = [
            run.measured[workload.name].window if workload.name in run.measured else None for run in runs.values()
        ]
        if any(windows):
            lines.append(
                [
                    workload.name,
                    *(
                        f"{window.cpu.server:.2f} + {window.cpu.generator:.2f} + {window.cpu.other:.2f}"
                        if window
                        else "–"
                        for window in windows
                    ),
                ]
            )
    return [*markdown_table(header, lines), ""] if lines else []


def generator_table(workloads: Sequence[WorkloadRows], runs: dict[str, TargetRun]) -> list[str]:
    """The generator's ceiling: what it reached against etcd, the CPU each operation cost it, and so
    how many operations one core of it could send."""
    reference = runs.get(REFERENCE)
    header = [
        f"load generator against {REFERENCE}",
        "operations/s",
        "generator cores busy",
        "generator CPU per operation, µs",
        "ceiling: operations/s per generator core",
    ]
    lines = []
    for workload in workloads:
        measured = reference.measured.get(workload.name) if reference else None
        window = measured.window if measured else None
        if window and window.operations_per_second and window.cpu.generator:
            cpu_per_operation = window.cpu.generator / window.operations_per_second
            lines.append(
                [
                    workload.name,
                    format_number(window.operations_per_second),
                    f"{window.cpu.generator:.2f}",
                    format_number(cpu_per_operation * 1e6),
                    format_number(1 / cpu_per_operation),
                ]
            )
    return [*markdown_table(header, lines), ""] if lines else []


def disturbance_note(runs: dict[str, TargetRun]) -> list[str]:
    """A warning when other processes kept a noticeable share of the CPUs busy during the windows."""
    others = [
        measured.window.cpu.other for run in runs.values() for measured in run.measured.values() if measured.window
    ]
    if not others or max(others) < DISTURBED_CORES:
        return []
    return [
        f"Other processes kept up to {max(others):.2f} cores busy during the measurements: "
        "the numbers are disturbed; compare them with care or rerun on a quiet machine."
    ]


def render(workloads: Sequence[WorkloadRows], runs: dict[str, TargetRun], notes: Sequence[str]) -> str:
    lines = [*results_table(workloads, runs), "", *cpu_table(workloads, runs), *generator_table(workloads, runs)]
    lines += [f"- {note}" for note in [*notes, *disturbance_note(runs)]]
    for target, run in runs.items():
        lines += [f"- {target} failed {workload}: {error}" for workload, error in run.failures.items()]
    return "\n".join(lines) + "\n"
