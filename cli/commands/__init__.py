"""The CLI's commands, one module per family. Each module has `register(subparsers)`;
`cli.main.COMMAND_MODULES` lists them."""
