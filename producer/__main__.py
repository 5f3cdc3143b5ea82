"""Entry point: `python -m producer --help`."""

import sys

from producer.cli import main

sys.exit(main())
