"""`python -m specdecode` = the `specdecode` command."""

from .cli.app import main

main()
