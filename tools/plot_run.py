"""Draw a run's curves to PNG: losses per task, p_avg, learning rate, data wait share, samples/s (and dev scores).

The `rc3-plot-run` command from a checkout: rc3.tools.plot_run.
"""
import sys

from rc3.tools.plot_run import main

if __name__ == "__main__":
    sys.exit(main())
