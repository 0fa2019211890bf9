import sys

from nimtrail.cli import main

sys.exit(main())
