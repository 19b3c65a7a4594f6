"""Model builders, datasets and learning-rate schedules for the papers' experiments.

Import the submodules directly (``from tf_lottery.training import models``); this
package module imports nothing so that it stays cheap and free of cycles.
"""
