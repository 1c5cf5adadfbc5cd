"""spark-submit entry point: spark-submit jobs/evaluate.py --config conf/evaluate_sentiment.toml ..."""

import sys

from dp_spark.spark.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
