"""Tests of the command line (cli.py) as a whole: the error lines and exit codes users see, the README's
error table, --help's sections."""
