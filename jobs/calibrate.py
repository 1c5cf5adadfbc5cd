"""spark-submit entry point: spark-submit jobs/calibrate.py --mechanisms tgumbel,mlap --epsilons ..."""

import sys

from dp_spark.spark.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
