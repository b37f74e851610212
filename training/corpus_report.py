"""The corpus report: counts per split, protocol, style and modifier, and the TF-IDF
baseline's figures, as report.md and a one-line summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass
class CorpusReport:
    out_dir: Path
    seed: int
    requested: int
    generated: int
    duplicates: int
    conflicts: int
    splits: dict[str, int]
    per_protocol: dict[str, Counter] = field(default_factory=dict)  # protocol -> split counts
    per_style: Counter = field(default_factory=Counter)
    per_modifier: Counter = field(default_factory=Counter)
    redirected: int = 0  # examples whose label a modifier decided
    fallback_protocols: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # TF-IDF + logistic regression trained on the train split: {"test": ..., "dev": ...}
    # as `metrics.score_baseline` returns them; empty when not run.
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)
    dev_set: str = ""

    def summary(self) -> str:
        total = sum(self.splits.values())
        smallest = min(self.per_protocol.items(), key=lambda kv: sum(kv[1].values()),
                       default=("-", Counter()))
        text = (
            f"Wrote {total} examples to {self.out_dir} (train {self.splits['train']}, "
            f"validation {self.splits['validation']}, test {self.splits['test']}) for "
            f"{len(self.per_protocol)} protocols in {self.seconds:.1f} s (seed {self.seed}); "
            f"{self.duplicates} duplicates dropped; {self.redirected} labels decided by a "
            f"modifier; fewest examples: {smallest[0]} ({sum(smallest[1].values())})."
        )
        if self.fallback_protocols:
            text += (f" {len(self.fallback_protocols)} protocols written from catalog "
                     f"indications only.")
        if self.baseline:
            scores = "; ".join(
                f"{name} top-1 {_pct(m['top1'])}, top-3 {_pct(m['top3'])} (n={m['n']})"
                for name, m in self.baseline.items())
            text += f" TF-IDF baseline trained on train: {scores}."
        return text + f" Report: {self.out_dir / 'report.md'}"

    def to_markdown(self) -> str:
        """The report file; no timings in it, so the same seed gives the same bytes."""
        lines = [
            "# Synthetic corpus report", "",
            f"- seed: {self.seed}", f"- requested: {self.requested}",
            f"- generated: {self.generated}",
            f"- duplicates dropped (normalized text): {self.duplicates}",
            f"- duplicates with a different label: {self.conflicts}",
            f"- labels decided by a modifier: {self.redirected}",
            f"- protocols from catalog indications only: "
            f"{', '.join(self.fallback_protocols) or 'none'}", "",
            "## Splits", "", "| split | examples |", "|---|---:|",
            *(f"| {name} | {count} |" for name, count in self.splits.items()), "",
            "## Per protocol", "", "| protocol | train | validation | test | total |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, counts in self.per_protocol.items():
            cells = " | ".join(str(counts[s]) for s in SPLITS)
            lines.append(f"| {name} | {cells} | {sum(counts.values())} |")
        lines += ["", "## Per style", "", "| style | examples |", "|---|---:|"]
        lines += [f"| {s} | {n} |" for s, n in sorted(self.per_style.items())]
        lines += ["", "## Per modifier", "",
                  "`no_X` is a denial of X (it must not change the protocol).", "",
                  "| modifier | examples |", "|---|---:|"]
        lines += [f"| {m} | {n} |" for m, n in sorted(self.per_modifier.items())]
        if self.baseline:
            lines += self._baseline_markdown()
        return "\n".join(lines) + "\n"

    def _baseline_markdown(self) -> list[str]:
        names = list(self.baseline)
        lines = [
            "", "## TF-IDF baseline", "",
            "TF-IDF (words 1-2 + characters 3-5) and logistic regression trained on the train "
            "split, scored on this corpus's test split and on the independently written "
            f"development orders ({self.dev_set or 'absent'}). A corpus whose own test figure "
            "is far above the development figure is easier than real orders.", "",
            "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
            "| orders | " + " | ".join(str(self.baseline[n]["n"]) for n in names) + " |",
            "| top-1 | " + " | ".join(_pct(self.baseline[n]["top1"]) for n in names) + " |",
            "| top-3 | " + " | ".join(_pct(self.baseline[n]["top3"]) for n in names) + " |",
        ]
        for name in names:
            for key, table in self.baseline[name].items():
                if not key.startswith("by_"):
                    continue
                lines += ["", f"### {name} by {key[3:]}", "",
                          f"| {key[3:]} | orders | top-1 | top-3 |", "|---|---:|---:|---:|"]
                lines += [f"| {value} | {m['n']} | {_pct(m['top1'])} | {_pct(m['top3'])} |"
                          for value, m in table.items()]
        return lines


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
