"""The CLI's commands, one module per family. Each module has `register(subparsers)`;
`nimtrail.cli.COMMAND_MODULES` lists them."""
