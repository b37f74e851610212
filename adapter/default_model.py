"""The first-run default model, trained in a child process so that the service can always stop.

`radproto serve` with no `model` serves `models:/radproto@champion`. When the registry lacks
it, the service trains it once (`settings.default_model_preset`, default-cpu). That training
runs in a child process (`python -m radproto.adapter.default_model ...`) in its own session:

* the terminal's Ctrl-C reaches only the service, which asks the child to stop with one
  SIGTERM: the child ends the step in progress, checkpoints and exits with PAUSED (the next
  start resumes); before training began (corpus generation, loading) it exits at once;
* the corpus is written to `corpus.partial` and renamed when complete, checkpoints are
  written atomically by the trainer: a stop at any moment leaves no half-written state;
* torch never runs in a thread of the service while its interpreter exits (that aborted
  with "terminate called without an active exception");
* the child stops by itself if the service dies (its parent process changes).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODEL_NAME, DEFAULT_ALIAS = "radproto", "champion"
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{DEFAULT_ALIAS}"
PAUSED = 3  # the child's exit status when it stopped on request (checkpointed)
#: After asking the child to stop, wait this long for its step to end and its checkpoint.
STOP_WAIT_S = 300.0
log = logging.getLogger("radproto.default_model")


class TrainingPaused(Exception):
    """The first-run training stopped on request; the next start resumes it."""


def default_model_uri(*, tracking_uri: str, catalog: Path | None, catalog_mode: str | None,
                      work_dir: Path, preset: str, stop: threading.Event,
                      log_format: str = "json", running: threading.Event | None = None) -> str:
    """The default model's URI, training it in a child process first if the registry lacks
    it. `stop` set: the child is asked to stop and TrainingPaused is raised once it has.
    `running` is set while the child runs."""
    from radproto.training.tracking import registry_has

    if registry_has(DEFAULT_MODEL_URI, tracking_uri=tracking_uri):
        return DEFAULT_MODEL_URI
    command = [sys.executable, "-m", "radproto.adapter.default_model",
               "--tracking-uri", tracking_uri, "--work-dir", str(work_dir), "--preset", preset,
               "--log-format", log_format]
    if catalog is not None:
        command += ["--catalog", str(catalog)]
    if catalog_mode:
        command += ["--catalog-mode", catalog_mode]
    # stdout carries the URI; stderr (logs, the progress bar) is the service's.
    if stop.is_set():
        raise TrainingPaused("stopped before the first-run training began")
    if running is not None:
        running.set()
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                 start_new_session=True)
        asked_at: float | None = None
        while child.poll() is None:
            if stop.is_set() and asked_at is None:
                child.send_signal(signal.SIGTERM)
                asked_at = time.monotonic()
            if asked_at is not None and time.monotonic() - asked_at > STOP_WAIT_S:
                child.kill()  # the checkpoint is written atomically: at worst a step is lost
            time.sleep(0.2)
        out = child.stdout.read() if child.stdout else ""
    finally:
        if running is not None:
            running.clear()
    if child.returncode == PAUSED or (asked_at is not None and child.returncode != 0):
        raise TrainingPaused("the first-run training stopped; the next start resumes it")
    if child.returncode != 0:
        from radproto.model.errors import ModelError

        raise ModelError(f"training the default model failed (exit status {child.returncode})")
    lines = [line for line in out.splitlines() if line.startswith("models:/")]
    return lines[-1] if lines else DEFAULT_MODEL_URI


# ------------------------------------------------------------------------------ the child


def _write_corpus_atomically(corpus_dir: Path, catalog: object) -> None:
    from radproto.training.corpus import write_corpus

    partial = corpus_dir.with_name(corpus_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("generating the synthetic corpus")
    try:
        write_corpus(partial, catalog=catalog)  # type: ignore[arg-type]
    except BaseException:  # a stop (KeyboardInterrupt) included: leave nothing half-written
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(corpus_dir, ignore_errors=True)
    partial.rename(corpus_dir)


def _train(args: argparse.Namespace, stop: threading.Event, training: threading.Event) -> str:
    """Corpus (once), then the preset's training, resumed from its checkpoint if one exists,
    registered as the champion."""
    from radproto.model.catalog import load_catalog
    from radproto.training.config import load_preset
    from radproto.training.finetune import CHECKPOINT_DIR, CHECKPOINT_FILE, Trainer, train

    catalog = load_catalog(args.catalog, mode=args.catalog_mode)
    work_dir = Path(args.work_dir)
    corpus_dir = work_dir / "corpus"
    if not (corpus_dir / "train.jsonl").is_file():
        _write_corpus_atomically(corpus_dir, catalog)
    training.set()  # from here a stop waits for the step boundary and checkpoints
    if stop.is_set():
        raise KeyboardInterrupt
    config = load_preset(args.preset).replace(
        data=[str(corpus_dir)], out_dir=str(work_dir / "model"), tracking_uri=args.tracking_uri,
        register_name=DEFAULT_MODEL_NAME, alias=DEFAULT_ALIAS)
    resume = (work_dir / "model" / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file()

    def stop_when_asked(step: int, trainer: Trainer) -> None:
        if stop.is_set():
            trainer.request_stop()

    result = train(config, catalog, resume=resume, on_step=stop_when_asked)
    return result.registered_uri or DEFAULT_MODEL_URI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radproto.adapter.default_model")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--catalog", type=Path, default=None)
    parser.add_argument("--catalog-mode", default=None)
    parser.add_argument("--log-format", default="json")
    args = parser.parse_args(argv)
    from radproto.adapter.observability import configure_logging

    configure_logging("INFO", fmt=args.log_format)
    stop = threading.Event()
    training = threading.Event()  # once set, a stop waits for the step boundary

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if not training.is_set():
            raise KeyboardInterrupt  # nothing is half-written before training starts

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    parent = os.getppid()

    def watch_parent() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("the service is gone: stopping the first-run training")
                stop.set()

    threading.Thread(target=watch_parent, daemon=True, name="parent-watch").start()
    from radproto.training.finetune import TrainingInterrupted

    try:
        uri = _train(args, stop, training)
    except (KeyboardInterrupt, TrainingInterrupted):
        return PAUSED
    print(uri, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
