"""The ``vae`` command (:mod:`pipeline.cli.main`)."""

import time

COMMAND_STARTED = time.perf_counter()  # the "in all" times of a command's summary count from here
