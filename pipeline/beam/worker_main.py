"""A Beam worker process of a ``multi_processing`` DirectRunner: Beam's SDK harness, started after
the ``vae`` command's logging set-up (:func:`pipeline.logging_setup.configure_worker`), so that a
worker prints in the command's format, and TensorFlow's start-up lines stay out of the terminal.
``python -m pipeline.beam.worker_main`` is the command the runner starts (``runner.WORKER_COMMAND``)."""

from __future__ import annotations

import sys

from pipeline.logging_setup import configure_worker


def main() -> None:
    configure_worker()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
