"""`python -m nimtrail`: the same program as the `nimtrail` command (the supervisor starts
each stage this way). The only module of the base package that reaches up to the CLI."""

import sys

from cli.main import main

sys.exit(main())
