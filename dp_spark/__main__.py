"""``python -m dp_spark <command>``: see ``dp_spark.cli``."""

import sys

from dp_spark.cli import main

if __name__ == "__main__":
    sys.exit(main())
