"""The CLI's commands that are more than a call into the library: demo, lens, eval of a run."""
